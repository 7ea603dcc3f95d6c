"""Build one CDR from a call's events and a reference-data version (SPEC section 3).

Pure and deterministic: the same events and `RefData` always give the same CDR, so the
streaming worker, offline replay and later re-rating agree. Decisions where SPEC is silent:

* Duration is ``ceil(end - connect)`` in whole seconds at microsecond resolution; an end
  (or timeout) before the connect gives 0 rather than a negative duration, but the call is
  still `answered` because a connect was seen.
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

    connect_time = connect.ts if connect is not None else None
    duration = call_duration(connect_time, end_time)
    status = call_status(connect is not None, code, initiator)
    source = start.source or ""
    destination = start.destination or ""
    ts = start.ts

    if start.direction == "outbound":
        trunk_name = start.trunk or ""
        trunk = refdata.trunks.get(trunk_name)
        cli = (trunk.replace_cli if trunk is not None else None) or source
        origin = (trunk.origin_country if trunk is not None else None) or describe(cli).country
        dest_info = describe(destination)
        kind = cdr_type(origin, dest_info.country)
        row = None
        if trunk is not None:
            row = refdata.rates.lookup(trunk.deck, destination.lstrip("+"), kind, ts)
        if row is None:
            return CDR(
                id=start.id,
                direction="outbound",
                account=start.account or "",
                gateway=start.gateway or "",
                start_time=ts,
                connect_time=connect_time,
                end_time=end_time,
                source=source,
                destination=destination,
                duration=duration,
                disconnect_code=code,
                disconnect_reason=reason,
                disconnect_initiator=initiator,
                status=status,
                cdr_type=kind,
                country_name=dest_info.country_name,
                network_name=dest_info.network,
                trunk=trunk_name,
                cli=cli,
                rated=False,
                timed_out=timed_out,
                revision=revision,
            )
        initial = row.initial_increment
        billing = billing_duration(duration, initial, row.recurring_increment)
        return CDR(
            id=start.id,
            direction="outbound",
            account=start.account or "",
            gateway=start.gateway or "",
            start_time=ts,
            connect_time=connect_time,
            end_time=end_time,
            source=source,
            destination=destination,
            duration=duration,
            disconnect_code=code,
            disconnect_reason=reason,
            disconnect_initiator=initiator,
            status=status,
            cdr_type=kind,
            country_name=row.country or dest_info.country_name,
            network_name=row.network or dest_info.network,
            trunk=trunk_name,
            cli=cli,
            billing_duration=billing,
            rate=row.rate,
            charged=charge(
                duration, billing, row.connection_fee, row.initial_rate, row.rate, initial
            ),
            rated=True,
            timed_out=timed_out,
            revision=revision,
        )

    if start.direction != "inbound":
        raise ValueError(f"call {start.id!r}: start event has no direction")

    did_number = start.did or ""
    trunk_name = start.trunk or ""
    in_trunk = refdata.trunks.get(trunk_name) if trunk_name else None
    origin = (in_trunk.origin_country if in_trunk is not None else None) or describe(source).country
    did_info = describe(did_number)
    kind = cdr_type(origin, did_info.country)
    did = refdata.dids.get(did_number)
    rated = did is not None
    toll_free = metered = termination = None
    if did is not None:
        initial = did.initial_increment
        billing = billing_duration(duration, initial, did.recurring_increment)
        if did.toll_free_rate is not None:
            r = did.toll_free_rate
            toll_free = charge(duration, billing, _NO_FEE, r, r, initial)
        if did.metered_rate is not None:
            r = did.metered_rate
            metered = charge(duration, billing, _NO_FEE, r, r, initial)
        pstn = digits_of(destination) if destination else None
        if pstn is not None:
            row = None
            if did.termination_deck is not None:
                term_kind = cdr_type(origin, describe(pstn).country)
                row = refdata.rates.lookup(did.termination_deck, pstn, term_kind, ts)
            if row is None:
                rated = False
            else:
                termination = charge(
                    duration, billing, row.connection_fee, row.initial_rate, row.rate, initial
                )
    return CDR(
        id=start.id,
        direction="inbound",
        account=start.account or "",
        gateway=start.gateway or "",
        start_time=ts,
        connect_time=connect_time,
        end_time=end_time,
        source=source,
        destination=destination,
        duration=duration,
        disconnect_code=code,
        disconnect_reason=reason,
        disconnect_initiator=initiator,
        status=status,
        cdr_type=kind,
        country_name=did_info.country_name,
        network_name=did_info.network,
        trunk=trunk_name,
        did=did_number,
        toll_free_amount=toll_free,
        termination_amount=termination,
        metered_amount=metered,
        rated=rated,
        timed_out=timed_out,
        revision=revision,
    )
