"""The billing-grade rules (SPEC sections 1 to 3, "Billing-grade rules"), one test per rule,
through the whole core: raw event bytes in, CDRs and dead letters out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from pipeline.core.correlate import Deadlines
from pipeline.core.engine import Engine
from pipeline.core.model import CDR, Source
from pipeline.core.refdata import RefDataHolder

D = Decimal
T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)

RATES = """\
deck,prefix,country,network,category,rate,initial_rate,connection_fee,initial_increment,recurring_increment,effective_from
std,1,United States,Fixed,,0.0100,,0,1,1,2020-01-01
std,1876,Jamaica,,,0.1500,,0,1,1,2020-01-01
std,33,France,Fixed,,0.0110,,0,1,1,2020-01-01
std,33,France,Fixed,Origin based,0.0050,,0,1,1,2020-01-01
std,33,France,Fixed,Local,0.0020,,0,1,1,2020-01-01
std,49,Germany,Fixed,,0.0120,,0,1,1,2020-01-01
std,49,Germany,,Local,0.0100,,0,1,1,2020-01-01
std,4915,Germany,Mobile,,0.0500,,0,1,1,2020-01-01
std,4915,Germany,Mobile,Origin based,0.0200,,0,1,1,2020-01-01
std,262,Reunion,,,0.0900,,0,1,1,2020-01-01
std,262,Reunion,,Origin based,0.0300,,0,1,1,2020-01-01
std,350,Gibraltar,,,0.0800,,0,1,1,2020-01-01
std,350,Gibraltar,,Origin based,0.0300,,0,1,1,2020-01-01
std,44,United Kingdom,Fixed,,0.0150,,0,1,1,2020-01-01
term,44,United Kingdom,Fixed,,0.0120,,0,1,1,2020-01-01
term,33,France,Fixed,,0.0100,,0,1,1,2020-01-01
"""
TRUNKS = """\
trunk,account,deck,replace_cli,origin_country
T1,acc-1001,std,,
T-de,acc-1001,std,,DE
"""
DIDS = """\
did,account,toll_free_rate,metered_rate,termination_deck,initial_increment,recurring_increment
442079460123,acc-2001,,0.0060,term,1,1
33142685300,acc-2002,,0.0030,,1,1
"""

FR_FIXED = "33142685300"
DE_FIXED = "493012345678"
DE_MOBILE = "4915112345678"
RE_FIXED = "262262123456"
GI_FIXED = "35020012345"


@pytest.fixture()
def engine(tmp_path: Path) -> Engine:
    for name, text in (("rates.csv", RATES), ("trunks.csv", TRUNKS), ("dids.csv", DIDS)):
        (tmp_path / name).write_text(text)
    return Engine(RefDataHolder(tmp_path))


def stamp(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def start(call_id: str, **fields) -> bytes:
    base = {
        "event": "start",
        "id": call_id,
        "ts": stamp(0),
        "gateway": "fra1",
        "direction": "outbound",
        "account": "acc-1001",
        "source": "12015550123",
        "destination": FR_FIXED,
        "trunk": "T1",
    }
    if fields.get("direction") == "inbound":
        del base["trunk"]
    return orjson.dumps({**base, **fields})


def connect(call_id: str, ts: str | None = None) -> bytes:
    return orjson.dumps({"event": "connect", "id": call_id, "ts": ts or stamp(2)})


def end(call_id: str, ts: str | None = None) -> bytes:
    return orjson.dumps(
        {
            "event": "end",
            "id": call_id,
            "ts": ts or stamp(62),
            "disconnect_code": 200,
            "disconnect_reason": "Bye",
            "disconnect_initiator": "origination",
        }
    )


def call(engine: Engine, *messages: bytes) -> CDR:
    """Feed the messages; the call's one final CDR (nothing dead-lettered)."""
    cdrs = []
    for offset, raw in enumerate(messages):
        out = engine.feed(raw, Source("t", 0, offset), 0)
        assert not out.dead, out.dead
        cdrs.extend(out.cdrs)
    assert cdrs
    return cdrs[-1]


def answered(engine: Engine, call_id: str, **fields) -> CDR:
    """A call connected 2 s after its start and ended 60 s later."""
    return call(engine, start(call_id, **fields), connect(call_id), end(call_id))


def answered_inbound(
    engine: Engine, call_id: str, did: str, destination: str, account: str = "acc-2001"
) -> CDR:
    """`answered` for an inbound call to `did` delivered to `destination`."""
    return answered(
        engine, call_id, direction="inbound", account=account, did=did, destination=destination
    )


# ----------------------------------------------------------------- a SIP URI is not the PSTN


def test_a_did_delivered_to_a_sip_uri_has_no_termination_amount(engine: Engine):
    cdr = answered_inbound(
        engine,
        "pbx",
        did="442079460123",
        destination="sip:442079460123@pbx.customer.example",
        account="acc-2001",
    )
    assert cdr.termination_amount is None and cdr.rated and cdr.flags == ()
    assert cdr.metered_amount == D("0.006000")  # 60 s at 0.0060/min


def test_a_sip_uri_on_a_did_without_termination_deck_is_rated(engine: Engine):
    cdr = answered_inbound(
        engine, "ip", did=FR_FIXED, destination="sip:+33142685300@10.0.0.5", account="acc-2002"
    )
    assert cdr.rated and cdr.termination_amount is None and cdr.flags == ()


def test_tel_and_digits_are_pstn_terminations(engine: Engine):
    for call_id, destination in (("tel", "tel:+33142685300"), ("digits", "+33142685300")):
        cdr = answered_inbound(
            engine, call_id, did="442079460123", destination=destination, account="acc-2001"
        )
        assert cdr.termination_amount == D("0.010000"), destination  # 60 s at 0.0100/min


# ------------------------------------------------------------ an invalid caller ID: no country


@pytest.mark.parametrize("cli", ["4912", "33000000000"])
def test_an_invalid_caller_id_is_an_unknown_origin(engine: Engine, cli: str):
    cdr = answered(engine, f"cli-{cli}", source=cli, destination=FR_FIXED)
    assert cdr.cdr_type == "International"
    assert cdr.rate == D("0.0110")  # the uncategorised row, not Origin based or Local


def test_an_invalid_destination_takes_its_country_name_from_the_rate_row_only(engine: Engine):
    cdr = answered(engine, "inv", destination="4900000")  # matches "49", not a valid number
    assert cdr.cdr_type == "International"
    assert (cdr.country_name, cdr.rate) == ("Germany", D("0.0120"))
    unmatched = answered(engine, "inv2", destination="999123456")
    assert (unmatched.country_name, unmatched.network_name) == ("", "Unknown")
    assert unmatched.flags == ("no_rate",) and not unmatched.rated


# --------------------------------------------------------------- the trunk or DID owns the call


def test_the_trunks_owner_is_the_account(engine: Engine):
    cdr = answered(engine, "own", account="acc-9999")
    assert cdr.account == "acc-1001" and cdr.flags == ("account_mismatch",)
    assert cdr.rated and engine.counters["cdrs"] == 1
    same = answered(engine, "own2", account="acc-1001")
    assert same.account == "acc-1001" and same.flags == ()


def test_the_dids_owner_is_the_account(engine: Engine):
    cdr = answered_inbound(
        engine, "own-in", did="442079460123", destination="sip:1001@pbx", account="acc-9999"
    )
    assert cdr.account == "acc-2001" and cdr.flags == ("account_mismatch",)


def test_an_unknown_trunk_is_unrated_under_the_events_account(engine: Engine):
    cdr = answered(engine, "unk", account="acc-9999", trunk="Nobody's Trunk")
    assert (cdr.account, cdr.flags, cdr.rated) == ("acc-9999", ("unknown_trunk",), False)
    assert cdr.charged is None


def test_an_unknown_did_is_unrated_and_flagged(engine: Engine):
    cdr = answered_inbound(
        engine, "unk-did", did="442079460999", destination="sip:1001@pbx", account="acc-7"
    )
    assert (cdr.account, cdr.flags, cdr.rated) == ("acc-7", ("unknown_did",), False)
    assert (cdr.toll_free_amount, cdr.metered_amount, cdr.termination_amount) == (None,) * 3


def test_a_termination_without_rate_is_flagged_and_keeps_what_was_computed(engine: Engine):
    cdr = answered(
        engine,
        "no-term",
        direction="inbound",
        account="acc-2001",
        did="442079460123",
        destination="tel:+4930123456",  # the term deck has no 49 row
    )
    assert (cdr.flags, cdr.rated, cdr.termination_amount) == (("no_rate",), False, None)
    assert cdr.metered_amount == D("0.006000")


# --------------------------------------------------------------- category first, then prefix


def test_category_first_then_longest_prefix(engine: Engine):
    local = answered(engine, "de-de", source=DE_FIXED, destination=DE_MOBILE)
    assert (local.cdr_type, local.rate) == ("Local", D("0.0100"))  # "49 Local", not "4915"
    eea = answered(engine, "fr-de", source=FR_FIXED, destination=DE_MOBILE)
    assert (eea.cdr_type, eea.rate) == ("Origin based", D("0.0200"))
    other = answered(engine, "us-de", source="12015550123", destination=DE_MOBILE)
    assert (other.cdr_type, other.rate) == ("International", D("0.0500"))


def test_nanp_countries_are_not_the_united_states(engine: Engine):
    cdr = answered(engine, "jm", destination="18762101234")
    assert (cdr.rate, cdr.country_name) == (D("0.1500"), "Jamaica")


# ---------------------------------------------------------------------------------- the EEA


def test_the_eus_outermost_regions_are_in_the_eea(engine: Engine):
    reunion = answered(engine, "re", trunk="T-de", destination=RE_FIXED)
    assert (reunion.cdr_type, reunion.rate) == ("Origin based", D("0.0300"))
    gibraltar = answered(engine, "gi", trunk="T-de", destination=GI_FIXED)
    assert (gibraltar.cdr_type, gibraltar.rate) == ("International", D("0.0800"))


# ---------------------------------------------------------------------- caller IDs in the wild


@pytest.mark.parametrize("source", ["+4989123456", "004989123456"])
def test_international_prefixes_are_stripped_from_the_caller_id(engine: Engine, source: str):
    cdr = answered(engine, f"cli{source}", source=source, destination=DE_FIXED)
    assert cdr.source == cdr.cli == "4989123456"
    assert cdr.cdr_type == "Local"


@pytest.mark.parametrize("source", ["anonymous", "Restricted", "unknown", ""])
def test_a_withheld_caller_id_keeps_the_call(engine: Engine, source: str):
    cdr = answered(engine, f"w-{source}", source=source, destination=FR_FIXED)
    assert cdr.source == "" and cdr.cli == ""
    assert (cdr.cdr_type, cdr.rate) == ("International", D("0.0110"))


def test_destination_and_did_are_normalised(engine: Engine):
    out = answered(engine, "plus", destination="+33142685300")
    assert out.destination == FR_FIXED and out.rated
    inbound = answered_inbound(
        engine, "did00", did="00442079460123", destination="sip:1001@pbx", account="acc-2001"
    )
    assert inbound.did == "442079460123" and inbound.rated and inbound.flags == ()


def test_only_a_malformed_outbound_destination_is_invalid(engine: Engine):
    out = engine.feed(start("bad", destination="+33abc"), Source("t", 0, 0), 0)
    assert not out.cdrs and len(out.dead) == 1
    assert out.dead[0].kind == "invalid" and "destination" in out.dead[0].reason


# ------------------------------------------------------------------ timed out: not billed


def _timed_out(engine: Engine) -> CDR:
    engine.feed(start("lost"), Source("t", 0, 0), 0)
    engine.feed(connect("lost"), Source("t", 0, 1), 0)
    out = engine.advance(0, T0 + timedelta(hours=5))
    assert len(out.cdrs) == 1
    return out.cdrs[0]


def test_a_timed_out_call_is_stored_unrated_by_default(engine: Engine):
    cdr = _timed_out(engine)
    assert cdr.timed_out and not cdr.rated
    assert cdr.duration == 4 * 3600 - 2  # up to the deadline
    assert (cdr.charged, cdr.billing_duration, cdr.rate) == (None, None, None)
    assert cdr.country_name == "France"  # still described for review


def test_an_operator_may_bill_timed_out_calls(tmp_path: Path):
    for name, text in (("rates.csv", RATES), ("trunks.csv", TRUNKS), ("dids.csv", DIDS)):
        (tmp_path / name).write_text(text)
    engine = Engine(RefDataHolder(tmp_path), settings=Deadlines(bill_timed_out=True))
    cdr = _timed_out(engine)
    assert cdr.timed_out and cdr.rated
    assert cdr.charged == D("2.639633")  # 14398 s at 0.0110/min, half-up


def test_the_real_end_corrects_an_unbilled_timeout(engine: Engine):
    _timed_out(engine)
    out = engine.feed(end("lost", stamp(62)), Source("t", 0, 2), 0)
    assert out.cdrs[-1].rated and out.cdrs[-1].charged == D("0.011000")


# ------------------------------------------------------------------------- exact durations


def test_durations_use_every_digit_of_the_timestamps(engine: Engine):
    cdr = call(
        engine,
        start("ns"),
        connect("ns", "2026-11-20T09:00:02.1234567891Z"),
        end("ns", "2026-11-20T09:00:12.1234567899Z"),  # 10.0000000008 s later
    )
    assert cdr.duration == 11
    exact = call(
        engine,
        start("ns2"),
        connect("ns2", "2026-11-20T09:00:02.1234567891Z"),
        end("ns2", "2026-11-20T09:00:12.12345678910Z"),  # exactly 10 s
    )
    assert exact.duration == 10
