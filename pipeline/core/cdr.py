"""Build one CDR from a call's events and a reference-data version (SPEC section 3).

Pure and deterministic: the same events and `RefData` always give the same CDR, so the
streaming worker, offline replay and later re-rating agree. Decisions where SPEC is silent, and
the billing-grade rules (docs/DESIGN.md gives a carrier's reason for each):

* Duration is ``ceil(end - connect)`` in whole seconds on the timestamps' full precision
  (sub-microsecond digits included); an end (or timeout) before the connect gives 0 rather than
  a negative duration, but the call is still `answered` because a connect was seen. The start
  time takes no part: a connect stamped before the start still counts from the connect.
* A call closed as timed out (no end, `timed_out_at` given) ends at `timed_out_at`, has no
  disconnect code or initiator and reason "Timed out". It is unrated (no rate, billing
  duration or amounts) unless `bill_timed_out`, which bills it up to the deadline: a lost BYE
  must not turn into a 4-hour charge. A real end always wins over `timed_out_at`.
* The trunk (outbound) or DID (inbound) owns the call: the CDR's account is its owner's; an
  event naming another account is flagged ``account_mismatch``. An unknown trunk or DID gives
  an unrated CDR under the event's account, flagged ``unknown_trunk`` / ``unknown_did``.
* Outbound: CLI = the trunk's `replace_cli`, else the source (empty when withheld); origin =
  the trunk's `origin_country`, else the CLI's country (none for an invalid or withheld CLI:
  International). `rate` is the matched row's (recurring) per-minute rate. No matching row:
  unrated, flagged ``no_rate``. An unanswered rated call has billing duration 0 and Charged
  0.000000, and stays rated.
* Inbound: origin = the inbound trunk's `origin_country` if `start.trunk` names a known trunk
  with one, else the source's country; destination country = the DID's. Country/network
  names are the DID's. Amounts use the DID's increments and no connection fee for toll-free
  and metered; termination only when the destination is a PSTN number (plain digits or
  ``tel:``, `numbers.digits_of`; a ``sip:`` URI is delivery to the customer's endpoint) and
  uses the termination row's fee and rates with the DID's increments, looked up with the CDR
  type of origin -> that number's country. A termination without deck or matching row makes
  the CDR unrated (``no_rate``) while the amounts that could be computed are kept.
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
_MICROSECOND = timedelta(microseconds=1)
_NO_FEE = Decimal(0)


def call_duration(
    connect_ts: datetime | None,
    end_ts: datetime,
    connect_sub_us: str = "",
    end_sub_us: str = "",
) -> int:
    """0 without connect, else ``ceil(end - connect)`` seconds, never negative. The `*_sub_us`
    are the timestamps' fraction digits beyond the microsecond (`Event.ts_sub_us`)."""
    if connect_ts is None:
        return 0
    td = end_ts - connect_ts
    if connect_sub_us or end_sub_us:  # exact: both in units of 10**-(6 + n) seconds
        n = max(len(connect_sub_us), len(end_sub_us))
        scale = 10**n
        units = (td // _MICROSECOND) * scale
        units += int(end_sub_us.ljust(n, "0") or 0) - int(connect_sub_us.ljust(n, "0") or 0)
        return -(-units // (1_000_000 * scale)) if units > 0 else 0
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
    bill_timed_out: bool = False,
) -> CDR:
    """The CDR for a call from its start event, optional connect, and end event (or the
    moment it was closed as timed out). Raises ValueError if neither an end nor
    `timed_out_at` is given or the start has no direction."""
    if end is not None:
        end_time = end.ts
        end_sub_us = end.ts_sub_us
        code = end.disconnect_code
        reason = end.disconnect_reason or ""
        initiator = end.disconnect_initiator
        timed_out = False
    elif timed_out_at is not None:
        end_time = timed_out_at
        end_sub_us = start.ts_sub_us  # the deadline is the start plus whole seconds
        code = None
        reason = TIMED_OUT_REASON
        initiator = None
        timed_out = True
    else:
        raise ValueError(f"call {start.id!r}: need an end event or timed_out_at")

    if start.direction not in ("outbound", "inbound"):
        raise ValueError(f"call {start.id!r}: start event has no direction")
    if connect is not None:
        connect_time: datetime | None = connect.ts
        duration = call_duration(connect.ts, end_time, connect.ts_sub_us, end_sub_us)
    else:
        connect_time, duration = None, 0
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
    if timed_out and not bill_timed_out:
        _unbilled(cdr)
    return cdr


def _own(cdr: CDR, owner: str, flags: list[str]) -> None:
    """The owner of the trunk or DID is the CDR's account; another account named by the
    event is flagged, not trusted."""
    if cdr.account != owner:
        flags.append("account_mismatch")
        cdr.account = owner


def _unbilled(cdr: CDR) -> None:
    """A call closed for want of an end: stored for review, charged nothing (unrated)."""
    cdr.rated = False
    cdr.billing_duration = cdr.rate = cdr.charged = None
    cdr.toll_free_amount = cdr.termination_amount = cdr.metered_amount = None


def _rate_outbound(cdr: CDR, refdata: RefData) -> None:
    """Owner, CLI, CDR type, rate, billing duration and charge of an outbound call."""
    trunk = refdata.trunks.get(cdr.trunk)
    flags: list[str] = []
    if trunk is None:
        flags.append("unknown_trunk")
        cli = cdr.source
        origin = describe(cli).country
    else:
        _own(cdr, trunk.account, flags)
        cli = trunk.replace_cli or cdr.source
        origin = trunk.origin_country or describe(cli).country
    dest_info = describe(cdr.destination)
    cdr.cli = cli
    cdr.cdr_type = kind = cdr_type(origin, dest_info.country)
    row = None
    if trunk is not None:
        row = refdata.rates.lookup(trunk.deck, cdr.destination, kind, cdr.start_time)
        if row is None:
            flags.append("no_rate")
    if flags:
        cdr.flags = tuple(sorted(flags))
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
    """Owner, CDR type and the toll-free, metered and termination amounts of an inbound call."""
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
        cdr.flags = ("unknown_did",)
        return
    flags: list[str] = []
    _own(cdr, did.account, flags)
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
    if pstn is not None:
        row = None
        if did.termination_deck is not None:
            term_kind = cdr_type(origin, describe(pstn).country)
            row = refdata.rates.lookup(did.termination_deck, pstn, term_kind, cdr.start_time)
        if row is None:
            cdr.rated = False
            flags.append("no_rate")
        else:
            cdr.termination_amount = charge(
                duration, billing, row.connection_fee, row.initial_rate, row.rate, initial
            )
    if flags:
        cdr.flags = tuple(sorted(flags))
