"""Build one CDR from a call's events and a reference-data version (SPEC section 3).

Pure and deterministic: the same events and `RefData` always give the same CDR, so the
streaming worker, offline replay and later re-rating agree. Decisions where SPEC is silent:

* Duration is ``ceil(end - connect)`` in whole seconds at microsecond resolution; an end
  (or timeout) before the connect gives 0 rather than a negative duration, but the call is
  still `answered` because a connect was seen. The start time takes no part: a connect stamped
  before the start (gateway clocks that disagree) still counts from the connect, as SPEC's
  formula says; the CDR keeps every time as stamped.
* A call closed as timed out (no end, `timed_out_at` given) ends at `timed_out_at`, has no
  disconnect code or initiator, reason "Timed out", and is billed up to the timeout. If a real
  end is given it always wins and `timed_out_at` is ignored.
* Outbound: an unknown trunk gives an unrated CDR whose CLI is the source unchanged and whose
  origin is the source's country. CLI replacement and `origin_country` apply as SPEC says.
  `rate` is the matched row's (recurring) per-minute rate. An unanswered rated call has
  billing duration 0 and Charged 0.000000, and stays rated.
* Inbound: origin = the inbound trunk's `origin_country` if `start.trunk` names a known trunk
  with one, else the source's country; destination country = the DID's. Country/network
  names are the DID's. Amounts use the DID's increments and no connection fee for toll-free
  and metered; termination (only when the destination is a PSTN number, see
  `numbers.digits_of`) uses the termination row's connection fee, initial rate and rate with
  the DID's increments, looked up with the CDR type of origin -> that PSTN number's country.
  An unknown DID, or a termination without deck or matching row, makes the CDR unrated while
  the amounts that could be computed are kept.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from pipeline.core.classify import call_status, cdr_type
from pipeline.core.model import CDR, Event
from pipeline.core.numbers import describe, digits_of
from pipeline.core.rating import billing_duration, charge
from pipeline.core.refdata import RefData

__all__ = ["build_cdr", "call_duration", "TIMED_OUT_REASON"]

TIMED_OUT_REASON = "Timed out"
_ZERO_TD = timedelta(0)
_NO_FEE = Decimal(0)


def call_duration(connect_ts: datetime | None, end_ts: datetime) -> int:
    """0 without connect, else ``ceil(end - connect)`` seconds, never negative."""
    if connect_ts is None:
        return 0
    td = end_ts - connect_ts
    if td <= _ZERO_TD:
        return 0
    return td.days * 86400 + td.seconds + (1 if td.microseconds else 0)


def build_cdr(
    start: Event,
    connect: Event | None,
    end: Event | None,
    refdata: RefData,
    *,
    timed_out_at: datetime | None = None,
    revision: int = 1,
) -> CDR:
    """The CDR for a call from its start event, optional connect, and end event (or the
    moment it was closed as timed out). Raises ValueError if neither an end nor
    `timed_out_at` is given or the start has no direction."""
    if end is not None:
        end_time = end.ts
        code = end.disconnect_code
        reason = end.disconnect_reason or ""
        initiator = end.disconnect_initiator
        timed_out = False
    elif timed_out_at is not None:
        end_time = timed_out_at
        code = None
        reason = TIMED_OUT_REASON
        initiator = None
        timed_out = True
    else:
        raise ValueError(f"call {start.id!r}: need an end event or timed_out_at")

    if start.direction not in ("outbound", "inbound"):
        raise ValueError(f"call {start.id!r}: start event has no direction")
    connect_time = connect.ts if connect is not None else None
    duration = call_duration(connect_time, end_time)
    # The fields both layouts share; rating below fills in the direction's own.
    cdr = CDR(
        id=start.id,
        direction=start.direction,
        account=start.account or "",
        gateway=start.gateway or "",
        start_time=start.ts,
        connect_time=connect_time,
        end_time=end_time,
        source=start.source or "",
        destination=start.destination or "",
        duration=duration,
        disconnect_code=code,
        disconnect_reason=reason,
        disconnect_initiator=initiator,
        status=call_status(connect is not None, code, initiator),
        cdr_type="International",
        country_name="",
        network_name="",
        trunk=start.trunk or "",
        did=(start.did or "") if start.direction == "inbound" else None,
        timed_out=timed_out,
        revision=revision,
    )
    if start.direction == "outbound":
        _rate_outbound(cdr, refdata)
    else:
        _rate_inbound(cdr, refdata)
    return cdr


def _rate_outbound(cdr: CDR, refdata: RefData) -> None:
    """CLI, CDR type, rate, billing duration and charge of an outbound call."""
    trunk = refdata.trunks.get(cdr.trunk)
    cli = (trunk.replace_cli if trunk is not None else None) or cdr.source
    origin = (trunk.origin_country if trunk is not None else None) or describe(cli).country
    dest_info = describe(cdr.destination)
    cdr.cli = cli
    cdr.cdr_type = kind = cdr_type(origin, dest_info.country)
    row = None
    if trunk is not None:
        row = refdata.rates.lookup(trunk.deck, cdr.destination.lstrip("+"), kind, cdr.start_time)
    if row is None:
        cdr.country_name, cdr.network_name = dest_info.country_name, dest_info.network
        cdr.rated = False
        return
    initial = row.initial_increment
    billing = billing_duration(cdr.duration, initial, row.recurring_increment)
    cdr.country_name = row.country or dest_info.country_name
    cdr.network_name = row.network or dest_info.network
    cdr.billing_duration = billing
    cdr.rate = row.rate
    cdr.charged = charge(
        cdr.duration, billing, row.connection_fee, row.initial_rate, row.rate, initial
    )


def _rate_inbound(cdr: CDR, refdata: RefData) -> None:
    """CDR type and the toll-free, metered and termination amounts of an inbound call."""
    did_number = cdr.did or ""
    in_trunk = refdata.trunks.get(cdr.trunk) if cdr.trunk else None
    origin = (in_trunk.origin_country if in_trunk is not None else None) or describe(
        cdr.source
    ).country
    did_info = describe(did_number)
    cdr.cdr_type = cdr_type(origin, did_info.country)
    cdr.country_name, cdr.network_name = did_info.country_name, did_info.network
    did = refdata.dids.get(did_number)
    if did is None:
        cdr.rated = False
        return
    duration = cdr.duration
    initial = did.initial_increment
    billing = billing_duration(duration, initial, did.recurring_increment)
    if did.toll_free_rate is not None:
        r = did.toll_free_rate
        cdr.toll_free_amount = charge(duration, billing, _NO_FEE, r, r, initial)
    if did.metered_rate is not None:
        r = did.metered_rate
        cdr.metered_amount = charge(duration, billing, _NO_FEE, r, r, initial)
    pstn = digits_of(cdr.destination) if cdr.destination else None
    if pstn is None:
        return
    row = None
    if did.termination_deck is not None:
        term_kind = cdr_type(origin, describe(pstn).country)
        row = refdata.rates.lookup(did.termination_deck, pstn, term_kind, cdr.start_time)
    if row is None:
        cdr.rated = False
    else:
        cdr.termination_amount = charge(
            duration, billing, row.connection_fee, row.initial_rate, row.rate, initial
        )
