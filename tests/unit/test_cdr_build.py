"""build_cdr: worked examples for every SPEC section 3 rule, on purpose-built reference data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from pipeline.core.cdr import build_cdr, call_duration
from pipeline.core.model import CDR, Event
from pipeline.core.refdata import RefData, load_refdata

D = Decimal

RATES = """\
deck,prefix,country,network,category,rate,initial_rate,connection_fee,initial_increment,recurring_increment,effective_from
permin,1,United States,Fixed,,0.0100,,0,60,60,2020-01-01
persec,49,Germany,Fixed,,0.0120,,0,1,1,2020-01-01
mixed,447,United Kingdom,Mobile,,0.0450,0.0600,0.0010,30,6,2020-01-01
std,1,United States,Fixed,,0.0100,,0,60,60,2020-01-01
std,1,United States,Fixed,,0.0080,,0,60,60,2026-11-01
std,1,United States,Fixed,Local,0.0060,,0,6,6,2020-01-01
std,1201,,,,0.0090,,0,6,6,2020-01-01
std,44,United Kingdom,Fixed,,0.0150,,0,60,60,2020-01-01
std,33,France,Fixed,,0.0110,,0,1,1,2020-01-01
std,33,France,Fixed,Origin based,0.0050,,0,1,1,2020-01-01
std,33,France,Fixed,Local,0.0020,,0,1,1,2020-01-01
tiny,1,United States,Fixed,,0.00015,,0,1,1,2020-01-01
term,1,United States,Fixed,,0.0070,,0.0005,1,1,2020-01-01
term,1,United States,Fixed,Local,0.0030,,0,1,1,2020-01-01
term,44,United Kingdom,Fixed,,0.0120,,0,1,1,2020-01-01
"""
TRUNKS = """\
trunk,account,deck,replace_cli,origin_country
T-min,acc-1,permin,,
T-sec,acc-1,persec,,
T-mixed,acc-1,mixed,,
T-std,acc-1,std,,
T-cli,acc-1,std,442079460000,
T-de,acc-1,std,,DE
T-tiny,acc-1,tiny,,
"""
DIDS = """\
did,account,toll_free_rate,metered_rate,termination_deck,initial_increment,recurring_increment
18005550100,acc-2,0.0250,,term,,
18005550101,acc-2,0.0250,0.0040,term,60,60
442079460123,acc-2,,0.0060,term,30,6
33142685300,acc-2,,0.0030,,,
493012345678,acc-2,,,persec,1,1
"""


@pytest.fixture(scope="module")
def rd(tmp_path_factory: pytest.TempPathFactory) -> RefData:
    path: Path = tmp_path_factory.mktemp("config")
    (path / "rates.csv").write_text(RATES)
    (path / "trunks.csv").write_text(TRUNKS)
    (path / "dids.csv").write_text(DIDS)
    return load_refdata(path)


T0 = datetime(2026, 6, 1, 10, 0, 0, tzinfo=UTC)
US = "12015550123"
US2 = "12025550123"
GB_FIXED = "442079460123"
GB_MOBILE = "447700900123"  # invalid per libphonenumber: no country of its own
DE = "4930901820"
FR = "33142685300"


def outbound(
    trunk: str = "T-std", source: str = US, destination: str = US2, at: datetime = T0
) -> Event:
    return Event(
        kind="start",
        id="call-1",
        ts=at,
        gateway="fra1",
        direction="outbound",
        account="acc-1",
        source=source,
        destination=destination,
        trunk=trunk,
    )


def inbound(
    did: str,
    destination: str = "sip:1001@pbx.example.com",
    source: str = "4915112345678",
    trunk: str | None = None,
) -> Event:
    return Event(
        kind="start",
        id="call-2",
        ts=T0,
        gateway="ams1",
        direction="inbound",
        account="acc-2",
        source=source,
        destination=destination,
        did=did,
        trunk=trunk,
    )


def connect(after: float = 2.0, start: Event | None = None) -> Event:
    base = start.ts if start is not None else T0
    return Event(kind="connect", id="x", ts=base + timedelta(seconds=after))


def end(
    after: float,
    code: int = 200,
    reason: str = "Bye",
    initiator: str = "origination",
    start: Event | None = None,
) -> Event:
    base = start.ts if start is not None else T0
    return Event(
        kind="end",
        id="x",
        ts=base + timedelta(seconds=after),
        disconnect_code=code,
        disconnect_reason=reason,
        disconnect_initiator=initiator,  # type: ignore[arg-type]
    )


def answered(rd: RefData, start: Event, seconds: float) -> CDR:
    """A call connected 2 s after start that lasted `seconds`."""
    return build_cdr(start, connect(2, start), end(2 + seconds, start=start), rd)


# --------------------------------------------------------------------------- duration


def test_duration_is_ceil_of_connect_to_end():
    c = T0 + timedelta(seconds=2, microseconds=500_000)
    assert call_duration(c, c + timedelta(seconds=9, microseconds=700_000)) == 10
    assert call_duration(c, c + timedelta(seconds=10)) == 10  # whole seconds stay
    assert call_duration(c, c + timedelta(microseconds=1)) == 1
    assert call_duration(c, c) == 0
    assert call_duration(c, c - timedelta(seconds=5)) == 0  # end before connect
    assert call_duration(None, c) == 0
    assert call_duration(c, c + timedelta(days=1, seconds=1)) == 86401


# --------------------------------------------------------------------------- outbound


def test_outbound_per_minute(rd: RefData):
    cdr = answered(rd, outbound("T-min", source="", destination=US2), 61)
    assert (cdr.duration, cdr.billing_duration) == (61, 120)
    assert cdr.rate == D("0.0100")
    assert cdr.charged == D("0.020000") and str(cdr.charged) == "0.020000"
    assert cdr.rated is True
    cdr = answered(rd, outbound("T-min", source="", destination=US2), 1)
    assert (cdr.billing_duration, cdr.charged) == (60, D("0.010000"))


def test_outbound_per_second(rd: RefData):
    cdr = answered(rd, outbound("T-sec", destination=DE), 37)
    assert (cdr.duration, cdr.billing_duration) == (37, 37)
    assert cdr.charged == D("0.007400")  # 37 * 0.012 / 60
    assert (cdr.country_name, cdr.network_name) == ("Germany", "Fixed")


def test_outbound_30_6_with_initial_rate_and_connection_fee(rd: RefData):
    cdr = answered(rd, outbound("T-mixed", destination=GB_MOBILE), 37)
    assert (cdr.duration, cdr.billing_duration) == (37, 42)
    # 0.0010 + 30 * 0.0600 / 60 + 12 * 0.0450 / 60 = 0.001 + 0.03 + 0.009
    assert cdr.charged == D("0.040000")
    assert cdr.rate == D("0.0450")  # the recurring per-minute rate is shown
    assert (cdr.country_name, cdr.network_name) == ("United Kingdom", "Mobile")
    cdr = answered(rd, outbound("T-mixed", destination=GB_MOBILE), 31)
    assert (cdr.billing_duration, cdr.charged) == (36, D("0.035500"))


def test_outbound_rounding_half_up(rd: RefData):
    # 1 s at 0.00015/min = 0.0000025 -> 0.000003 (half-even would say 0.000002)
    cdr = answered(rd, outbound("T-tiny", destination=US2), 1)
    assert str(cdr.charged) == "0.000003"


def test_unanswered_call_is_rated_at_zero(rd: RefData):
    start = outbound("T-mixed", destination=GB_MOBILE)
    cdr = build_cdr(start, None, end(20, 486, "Busy Here", "destination"), rd)
    assert cdr.status == "busy"
    assert (cdr.duration, cdr.billing_duration) == (0, 0)
    assert cdr.charged == D("0.000000")  # no connection fee without a connection
    assert cdr.connect_time is None
    assert cdr.rated is True and cdr.rate == D("0.0450")


def test_zero_duration_answered_call(rd: RefData):
    start = outbound("T-mixed", destination=GB_MOBILE)
    cdr = build_cdr(start, connect(2), end(2), rd)
    assert cdr.status == "answered"
    assert (cdr.duration, cdr.billing_duration, cdr.charged) == (0, 0, D("0.000000"))


def test_end_before_connect_gives_zero_duration(rd: RefData):
    cdr = build_cdr(outbound(), connect(10), end(5), rd)
    assert cdr.duration == 0 and cdr.status == "answered"


def test_effective_date_switch_over(rd: RefData):
    before = datetime(2026, 10, 31, 23, 59, 59, tzinfo=UTC)
    after = datetime(2026, 11, 1, tzinfo=UTC)
    # empty source: unknown origin -> International -> the uncategorised "1" rows
    old = answered(rd, outbound(source="", at=before), 60)
    new = answered(rd, outbound(source="", at=after), 60)
    assert (old.rate, old.charged) == (D("0.0100"), D("0.010000"))
    assert (new.rate, new.charged) == (D("0.0080"), D("0.008000"))


def test_category_specific_rate_beats_uncategorised(rd: RefData):
    cdr = answered(rd, outbound(source=US, destination=US2), 61)
    assert cdr.cdr_type == "Local"
    assert cdr.rate == D("0.0060")
    assert cdr.billing_duration == 66  # the Local row's 6/6 increments
    assert cdr.charged == D("0.006600")
    # same destination from an unknown origin: International -> uncategorised row
    other = answered(rd, outbound(source="", destination=US2), 61)
    assert (other.cdr_type, other.rate) == ("International", D("0.0100"))


def test_longest_prefix_and_names_from_number_when_row_has_none(rd: RefData):
    cdr = answered(rd, outbound(source="", destination="12015550199"), 7)
    assert cdr.rate == D("0.0090")  # "1201" beats "1"
    assert cdr.billing_duration == 12 and cdr.charged == D("0.001800")
    # the 1201 row has empty country/network: taken from the number
    assert (cdr.country_name, cdr.network_name) == ("United States", "Fixed or mobile")
    # a Local call: the "1, Local" row comes first, before any longer uncategorised prefix
    local = answered(rd, outbound(source=US, destination="12015550199"), 7)
    assert (local.cdr_type, local.rate) == ("Local", D("0.0060"))


def test_cli_replacement_changes_cli_and_origin(rd: RefData):
    cdr = answered(rd, outbound("T-cli", source=US, destination=US2), 60)
    assert cdr.source == US
    assert cdr.cli == "442079460000"
    assert cdr.cdr_type == "International"  # origin is the CLI's country, GB
    assert cdr.rate == D("0.0100")
    to_gb = answered(rd, outbound("T-cli", source=US, destination=GB_FIXED), 60)
    assert to_gb.cdr_type == "Local"  # GB -> GB
    plain = answered(rd, outbound("T-std", source=US, destination=US2), 60)
    assert plain.cli == US


def test_origin_country_override(rd: RefData):
    # CLI is a US number but the trunk says DE: DE -> FR is Origin based
    cdr = answered(rd, outbound("T-de", source=US, destination=FR), 60)
    assert cdr.cli == US
    assert cdr.cdr_type == "Origin based"
    assert cdr.rate == D("0.0050") and cdr.charged == D("0.005000")


@pytest.mark.parametrize(
    ("source", "destination", "cdr_type", "rate"),
    [
        (DE, FR, "Origin based", "0.0050"),  # both EEA
        (US, GB_FIXED, "International", "0.0150"),  # the seed's example
        (US, US2, "Local", "0.0060"),
        ("33612345678", FR, "Local", "0.0020"),
        ("", FR, "International", "0.0110"),  # unknown origin
    ],
)
def test_cdr_types(rd: RefData, source: str, destination: str, cdr_type: str, rate: str):
    cdr = answered(rd, outbound(source=source, destination=destination), 10)
    assert cdr.cdr_type == cdr_type
    assert cdr.rate == D(rate)


@pytest.mark.parametrize(
    ("connected", "code", "initiator", "status"),
    [
        (True, 200, "origination", "answered"),
        (False, 486, "destination", "busy"),
        (False, 600, "destination", "busy"),
        (False, 408, "destination", "no-answer"),
        (False, 480, "destination", "no-answer"),
        (False, 487, "origination", "cancelled"),
        (False, 487, "destination", "failed"),
        (False, 503, "destination", "failed"),
    ],
)
def test_each_status(rd: RefData, connected: bool, code: int, initiator: str, status: str):
    cdr = build_cdr(
        outbound(), connect(2) if connected else None, end(30, code, "x", initiator), rd
    )
    assert cdr.status == status
    assert cdr.disconnect_code == code and cdr.disconnect_initiator == initiator
    assert cdr.duration == (28 if connected else 0)


def test_unknown_trunk_is_unrated_but_stored(rd: RefData):
    cdr = answered(rd, outbound("No Such Trunk", source=US, destination=GB_MOBILE), 60)
    assert cdr.rated is False
    assert (cdr.rate, cdr.charged, cdr.billing_duration) == (None, None, None)
    assert cdr.cli == US and cdr.trunk == "No Such Trunk"
    assert cdr.duration == 60 and cdr.status == "answered"
    assert cdr.cdr_type == "International"
    assert cdr.flags == ("unknown_trunk",) and cdr.account == "acc-1"
    # no rate row: names from the number itself, which is not a valid number: none
    assert (cdr.country_name, cdr.network_name) == ("", "Unknown")


def test_missing_rate_is_unrated(rd: RefData):
    cdr = answered(rd, outbound("T-sec", source=DE, destination=US2), 60)  # persec has 49 only
    assert cdr.rated is False
    assert (cdr.rate, cdr.charged, cdr.billing_duration) == (None, None, None)
    assert (cdr.country_name, cdr.network_name) == ("United States", "Fixed or mobile")


def test_outbound_fields(rd: RefData):
    start = outbound("T-std", source=US, destination=US2)
    cdr = build_cdr(start, connect(2), end(12, 200, "Bye", "destination"), rd, revision=3)
    assert cdr == CDR(
        id="call-1",
        direction="outbound",
        account="acc-1",
        gateway="fra1",
        start_time=T0,
        connect_time=T0 + timedelta(seconds=2),
        end_time=T0 + timedelta(seconds=12),
        source=US,
        destination=US2,
        duration=10,
        disconnect_code=200,
        disconnect_reason="Bye",
        disconnect_initiator="destination",
        status="answered",
        cdr_type="Local",
        country_name="United States",
        network_name="Fixed",
        trunk="T-std",
        cli=US,
        billing_duration=12,
        rate=D("0.0060"),
        charged=D("0.001200"),
        rated=True,
        timed_out=False,
        revision=3,
    )


# --------------------------------------------------------------------------- timed out


def test_timed_out_connected_call(rd: RefData):
    start = outbound("T-sec", destination=DE)
    closed = T0 + timedelta(hours=4)
    cdr = build_cdr(start, connect(2), None, rd, timed_out_at=closed)
    assert cdr.timed_out is True
    assert cdr.end_time == closed
    assert cdr.disconnect_code is None and cdr.disconnect_initiator is None
    assert cdr.disconnect_reason == "Timed out"
    assert cdr.status == "answered"
    assert cdr.duration == 4 * 3600 - 2
    # unrated by default: a lost BYE is not a 4-hour charge
    assert (cdr.rated, cdr.rate, cdr.billing_duration, cdr.charged) == (False, None, None, None)
    assert (cdr.country_name, cdr.network_name) == ("Germany", "Fixed")  # still described
    billed = build_cdr(start, connect(2), None, rd, timed_out_at=closed, bill_timed_out=True)
    assert billed.rated is True and billed.timed_out is True
    assert billed.charged == D("2.879600")  # 14398 s * 0.012 / 60


def test_timed_out_unconnected_call(rd: RefData):
    closed = T0 + timedelta(hours=4)
    cdr = build_cdr(outbound(), None, None, rd, timed_out_at=closed)
    assert (cdr.status, cdr.duration, cdr.charged, cdr.timed_out, cdr.rated) == (
        "failed",
        0,
        None,
        True,
        False,
    )
    billed = build_cdr(outbound(), None, None, rd, timed_out_at=closed, bill_timed_out=True)
    assert (billed.charged, billed.rated) == (D("0.000000"), True)


def test_real_end_wins_over_timeout(rd: RefData):
    cdr = build_cdr(outbound(), connect(2), end(12), rd, timed_out_at=T0 + timedelta(hours=4))
    assert cdr.timed_out is False and cdr.duration == 10 and cdr.disconnect_code == 200


def test_needs_end_or_timeout(rd: RefData):
    with pytest.raises(ValueError, match="need an end event or timed_out_at"):
        build_cdr(outbound(), connect(2), None, rd)


# --------------------------------------------------------------------------- inbound


def test_inbound_toll_free_per_second(rd: RefData):
    cdr = answered(rd, inbound("18005550100"), 37)
    # 37 * 0.0250 / 60 = 0.015416666... -> 0.015417
    assert cdr.toll_free_amount == D("0.015417")
    assert cdr.metered_amount is None  # service not used for this DID
    assert cdr.termination_amount is None  # sip:1001@pbx is not a PSTN number
    assert cdr.rated is True
    assert (cdr.country_name, cdr.network_name) == ("United States", "Toll-free")
    assert cdr.cdr_type == "International"  # DE caller -> US DID
    assert (cdr.cli, cdr.billing_duration, cdr.rate, cdr.charged) == (None, None, None, None)
    assert cdr.did == "18005550100" and cdr.trunk == ""


def test_inbound_metered_and_termination_with_did_increments(rd: RefData):
    start = inbound("18005550101", destination="tel:+1-202-555-0123")
    cdr = answered(rd, start, 37)  # DID 60/60 -> 60 s billed
    assert cdr.toll_free_amount == D("0.025000")
    assert cdr.metered_amount == D("0.004000")
    # DE -> US is International: term "1" uncategorised with its 0.0005 connection fee,
    # 0.0005 + 60 * 0.0070 / 60
    assert cdr.termination_amount == D("0.007500")
    assert cdr.rated is True


def test_inbound_termination_category_from_origin_to_pstn_country(rd: RefData):
    start = inbound("18005550101", destination="tel:+12025550123", source=US)
    cdr = answered(rd, start, 37)
    # US -> US: the Local termination row, no connection fee: 60 * 0.0030 / 60
    assert cdr.termination_amount == D("0.003000")
    assert cdr.cdr_type == "Local"


def test_inbound_30_6_metered_and_plain_digit_destination(rd: RefData):
    cdr = answered(rd, inbound(GB_FIXED, destination=US2), 37)  # 30/6 -> 42 s
    assert cdr.metered_amount == D("0.004200")  # 42 * 0.006 / 60
    assert cdr.termination_amount == D("0.005400")  # 0.0005 + 42 * 0.007 / 60
    assert cdr.toll_free_amount is None
    assert cdr.cdr_type == "International"  # DE -> GB
    assert (cdr.country_name, cdr.network_name) == ("United Kingdom", "Fixed")


def test_inbound_unanswered_amounts_are_zero(rd: RefData):
    start = inbound("18005550101", destination="tel:+12025550123")
    cdr = build_cdr(start, None, end(15, 487, "Request Terminated", "origination"), rd)
    assert cdr.status == "cancelled"
    assert (cdr.toll_free_amount, cdr.metered_amount, cdr.termination_amount) == (
        D("0.000000"),
        D("0.000000"),
        D("0.000000"),
    )
    assert cdr.rated is True


def test_inbound_pstn_forward_without_termination_deck_is_unrated(rd: RefData):
    cdr = answered(rd, inbound(FR, destination="tel:+12025550123"), 37)
    assert cdr.rated is False
    assert cdr.termination_amount is None
    assert cdr.metered_amount == D("0.001850")  # still computed: 37 * 0.003 / 60


def test_inbound_termination_without_matching_row_is_unrated(rd: RefData):
    cdr = answered(rd, inbound("493012345678", destination="tel:+12025550123"), 37)
    assert cdr.rated is False and cdr.termination_amount is None


def test_inbound_unknown_did_is_unrated(rd: RefData):
    cdr = answered(rd, inbound("4930123456789", destination="tel:+12025550123"), 37)
    assert cdr.rated is False
    assert (cdr.toll_free_amount, cdr.metered_amount, cdr.termination_amount) == (None,) * 3
    assert cdr.country_name == "Germany"
    assert cdr.cdr_type == "Local"  # DE caller -> DE DID
    assert cdr.duration == 37


def test_inbound_trunk_origin_country(rd: RefData):
    # caller ID is American, but the inbound trunk T-de says the call comes from DE
    cdr = answered(rd, inbound(FR, source=US, trunk="T-de"), 10)
    assert cdr.cdr_type == "Origin based"
    assert cdr.trunk == "T-de"
    # an inbound trunk we do not know is kept by name and ignored for classification
    other = answered(rd, inbound(FR, source=US, trunk="carrier-x"), 10)
    assert (other.cdr_type, other.trunk) == ("International", "carrier-x")
