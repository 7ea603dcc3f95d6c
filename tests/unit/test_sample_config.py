"""The sample reference data (deploy/config) against the simulator's traffic.

Every call the simulator makes is priced and named after the country it reaches, except the
destinations the decks leave unpriced on purpose (`UNPRICED_DESTINATIONS`), calls on unknown
trunks and calls closed as timed out; and the demo's summary says which is which.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from math import ceil
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NamedTuple

import orjson
import phonenumbers
import pytest
from phonenumbers import PhoneNumberType

from pipeline.core.correlate import Deadlines
from pipeline.core.countries import country_name
from pipeline.core.engine import Engine
from pipeline.core.model import CDR, Source
from pipeline.core.refdata import RefData, RefDataHolder, load_refdata
from pipeline.demo import unrated_lines, unrated_reasons
from pipeline.replay import Replay
from pipeline.simulate import DESTINATIONS, UNPRICED_DESTINATIONS, SimConfig, generate, number_pool

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "config"
AT = datetime(2026, 12, 1, tzinfo=UTC)  # after the sample's newest row (2026-11-01)
CDR_TYPES = ("International", "Local", "Origin based")
UNPRICED = tuple(UNPRICED_DESTINATIONS)
KNOWN_TRUNKS = {"Outbound Trunk 1", "Outbound Trunk 2", "Outbound Trunk 3", "Outbound Trunk 4"}
REASONS = {"no_rate", "unknown_trunk", "unknown_did"}

# Every NANP area code outside the United States and Canada, and its country (ISO 3166-1).
NANP_COUNTRIES = {
    "1242": "BS", "1246": "BB", "1264": "AI", "1268": "AG", "1284": "VG", "1340": "VI",
    "1345": "KY", "1441": "BM", "1473": "GD", "1649": "TC", "1658": "JM", "1876": "JM",
    "1664": "MS", "1670": "MP", "1671": "GU", "1684": "AS", "1721": "SX", "1758": "LC",
    "1767": "DM", "1784": "VC", "1787": "PR", "1939": "PR", "1809": "DO", "1829": "DO",
    "1849": "DO", "1868": "TT", "1869": "KN",
}  # fmt: skip


@pytest.fixture(scope="module")
def refdata() -> RefData:
    return load_refdata(CONFIG)


def parse(digits: str) -> phonenumbers.PhoneNumber:
    return phonenumbers.parse("+" + digits)


def region_of(digits: str) -> str | None:
    number = parse(digits)
    return (
        phonenumbers.region_code_for_number(number)
        if phonenumbers.is_valid_number(number)
        else None
    )


def test_sample_decks_load_with_iso_names(refdata: RefData) -> None:
    rows = refdata.rates.rows
    assert {r.deck for r in rows} == {"standard", "premium", "term"}
    iso_names = {country_name(r) for r in phonenumbers.SUPPORTED_REGIONS}
    assert {r.country for r in rows} - {""} <= iso_names
    assert {r.network for r in rows} <= {"Fixed", "Mobile", "Fixed or mobile", ""}
    # An empty name (named after the number) only on "1", which is the US and Canada alike.
    assert {r.prefix for r in rows if not r.country or not r.network} == {"1"}
    assert {t.deck for t in refdata.trunks.values()} | {
        d.termination_deck for d in refdata.dids.values() if d.termination_deck
    } == {"standard", "premium", "term"}


def test_every_other_nanp_country_has_rows_of_its_own(refdata: RefData) -> None:
    for deck in ("standard", "premium", "term"):
        own = {
            r.prefix: r.country
            for r in refdata.rates.rows
            if r.deck == deck and r.category == "" and r.prefix in NANP_COUNTRIES
        }
        assert own == {p: country_name(c) for p, c in NANP_COUNTRIES.items()}, deck
        us = refdata.rates.lookup(deck, "12125550100", "International", AT)
        assert us is not None
        for prefix in NANP_COUNTRIES:  # dearer than the US and Canada
            row = refdata.rates.lookup(deck, prefix + "2345678", "International", AT)
            assert row is not None and row.prefix.startswith(prefix) and row.rate > us.rate


def test_categorised_rows_do_not_cover_other_countries(refdata: RefData) -> None:
    """Category first: a categorised row rates every call of its type under its prefix, so the
    longer uncategorised rows under it, and the numbers it covers, must be of its country."""
    rows = refdata.rates.rows
    numbers = [d for kind in DESTINATIONS for d in number_pool(kind)]
    for cat in (r for r in rows if r.category):
        under = {r.country for r in rows if r.deck == cat.deck and r.prefix.startswith(cat.prefix)}
        assert under == {cat.country}, cat
        covered = {region_of(d) for d in numbers if d.startswith(cat.prefix)}
        assert {country_name(r or "") for r in covered} <= {cat.country}, cat


def test_every_simulated_destination_is_priced_and_named_after_its_country(
    refdata: RefData,
) -> None:
    lookup = refdata.rates.lookup
    for kind in DESTINATIONS:
        for digits in number_pool(kind):
            number = parse(digits)
            region, network = region_of(digits), phonenumbers.number_type(number)
            name = country_name(region) if region and region != "001" else ""
            for deck in ("standard", "premium", "term"):
                for cdr_type in CDR_TYPES:
                    row = lookup(deck, digits, cdr_type, AT)
                    if digits.startswith(UNPRICED):
                        assert row is None, (digits, deck)
                        continue
                    assert row is not None, (digits, deck, cdr_type)
                    assert (row.country or name) == name, (digits, deck, row)
                    # The row's network never contradicts the number's.
                    if network == PhoneNumberType.MOBILE:
                        assert row.network != "Fixed", (digits, deck, row)
                    elif network == PhoneNumberType.FIXED_LINE:
                        assert row.network != "Mobile", (digits, deck, row)


def feed(engine: Engine, *events: dict[str, Any]) -> list[CDR]:
    cdrs = []
    for offset, event in enumerate(events):
        out = engine.feed(orjson.dumps(event), Source("t", 0, offset))
        assert not out.dead
        cdrs.extend(out.cdrs)
    return cdrs


def answered_call(call_id: str, destination: str, seconds: int) -> list[dict[str, Any]]:
    t0 = AT + timedelta(hours=10)

    def ts(at: float) -> str:
        return (t0 + timedelta(seconds=at)).isoformat()

    start = {
        "event": "start",
        "id": call_id,
        "ts": ts(0),
        "gateway": "gw-nyc1",
        "direction": "outbound",
        "account": "acc-1001",
        "source": "12125550100",
        "destination": destination,
        "trunk": "Outbound Trunk 1",  # the standard deck
    }
    end = {
        "event": "end",
        "id": call_id,
        "ts": ts(5 + seconds),
        "disconnect_code": 200,
        "disconnect_reason": "Bye",
        "disconnect_initiator": "origination",
    }
    return [start, {"event": "connect", "id": call_id, "ts": ts(5)}, end]


def deck_row(refdata: RefData, deck: str, digits: str) -> Any:
    """The uncategorised row with the longest prefix of `digits`, found by scanning the rows
    (not with the rate book's lookup)."""
    rows = [
        r
        for r in refdata.rates.rows
        if r.deck == deck and not r.category and digits.startswith(r.prefix)
        and r.effective_from <= AT
    ]  # fmt: skip
    return max(rows, key=lambda r: (len(r.prefix), r.effective_from))


@pytest.mark.parametrize(
    ("region", "name", "network"),
    [
        ("JM", "Jamaica", "Mobile"),
        ("TT", "Trinidad and Tobago", "Mobile"),
        ("US", "United States", "Fixed or mobile"),
        ("CA", "Canada", "Fixed or mobile"),
    ],
)
def test_a_us_caller_to_a_nanp_number_is_rated_at_its_countrys_row(
    refdata: RefData, region: str, name: str, network: str
) -> None:
    example = phonenumbers.example_number_for_type(region, PhoneNumberType.MOBILE)
    digits = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164)[1:]
    (cdr,) = feed(Engine(RefDataHolder(CONFIG)), *answered_call("c1", digits, 125))
    row = deck_row(refdata, "standard", digits)
    assert (cdr.country_name, cdr.network_name) == (name, network)
    assert cdr.cdr_type == ("Local" if region == "US" else "International")
    assert cdr.rated and cdr.flags == ()
    assert cdr.rate == row.rate
    i, r = row.initial_increment, row.recurring_increment
    billed = i + ceil((125 - i) / r) * r
    assert cdr.billing_duration == billed
    want = row.connection_fee + i * row.initial_rate / 60 + (billed - i) * row.rate / 60
    assert cdr.charged == want.quantize(Decimal("0.000001"), ROUND_HALF_UP)
    if region == "JM":
        assert row.prefix.startswith("1876") and row.rate > Decimal("0.1")


class Replayed(NamedTuple):
    starts: dict[str, dict[str, Any]]  # call id -> its start event
    ended: set[str]  # ids of the calls with an end event
    cdrs: list[CDR]  # the final CDR of each call
    expected: dict[str, int]


@pytest.fixture(scope="module")
def replayed() -> Replayed:
    """Simulated traffic replayed with the sample config."""
    cfg = SimConfig(
        calls=4000,
        seed=17,
        config_dir=CONFIG,
        start=datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3),
        call_rate=2.0,
        duplicate=0.02,
        reorder=0.02,
        never_ending=0.01,
        raw_caller_ids=0.05,
        unknown_trunk=0.01,
    )
    sim = generate(cfg)
    starts, ended = {}, set()
    for m in sim.messages:
        event = orjson.loads(m.value)
        if event["event"] == "start":
            starts[event["id"]] = event
        elif event["event"] == "end":
            ended.add(event["id"])
    final: dict[str, CDR] = {}
    settings = Deadlines(max_call_duration=timedelta(minutes=15))
    Replay(RefDataHolder(CONFIG), lambda batch: final.update((c.id, c) for c in batch),
           settings=settings).run((i, m.value) for i, m in enumerate(sim.messages))  # fmt: skip
    # Never-ending calls of the last 15 minutes stay open; every other call has its CDR.
    assert set(starts) - set(final) <= set(starts) - ended
    return Replayed(starts, ended, list(final.values()), sim.expected)


CDR_STILL_OPEN: Any = SimpleNamespace(timed_out=False)  # a call with no CDR yet


def unrated_by_design(start: dict[str, Any], cdr: CDR) -> set[str]:
    """Why a CDR of the simulation is meant to be unrated (empty: it is meant to be rated)."""
    reasons = {"timed_out"} if cdr.timed_out else set()
    dest = start["destination"]
    if start["direction"] == "outbound":
        if start["trunk"] not in KNOWN_TRUNKS:
            return reasons | {"unknown_trunk"}
        number: str | None = dest
    else:
        number = dest[5:] if dest.startswith("tel:+") else dest if dest.isdigit() else None
    if number and number.startswith(UNPRICED):
        reasons.add("no_rate")
    return reasons


def test_a_replayed_simulation_is_rated_but_for_the_named_few(replayed: Replayed) -> None:
    starts, ended, cdrs, expected = replayed
    why = {c.id: unrated_by_design(starts[c.id], c) for c in cdrs}
    for cdr in cdrs:
        assert cdr.timed_out == (cdr.id not in ended)
        reasons = why[cdr.id]
        assert cdr.rated == (not reasons), (cdr.id, reasons, cdr)
        flags = set(cdr.flags) & REASONS
        if cdr.timed_out:
            assert flags <= reasons, cdr
        else:
            assert flags == reasons, cdr
        if cdr.rated and cdr.direction == "outbound":
            assert cdr.country_name == country_name(region_of(cdr.destination) or ""), cdr
    # The simulator's ground truth agrees, and the named few are a small share.
    closed = {c.id for c in cdrs}
    unpriced = sum("no_rate" in r for r in why.values())
    assert 0 < unpriced <= expected["unpriced_destination"]
    assert expected["unpriced_destination"] - unpriced == sum(
        "no_rate" in unrated_by_design(s, CDR_STILL_OPEN)
        for i, s in starts.items()
        if i not in closed
    )
    unrated = sum(not c.rated for c in cdrs)
    assert 0.01 < unrated / len(cdrs) < 0.06


def test_the_demo_summary_says_why_cdrs_are_unrated(replayed: Replayed, tmp_path: Path) -> None:
    from pipeline.store.client import connect
    from pipeline.store.writer import CdrWriter

    cdrs = replayed.cdrs
    span = (min(c.start_time for c in cdrs), max(c.start_time for c in cdrs) + timedelta(1))
    client = connect(f"chdb://{tmp_path / 'store'}")
    try:
        CdrWriter(client).write(cdrs)
        got = unrated_reasons(client, *span)
    finally:
        client.close()
    unrated = [c for c in cdrs if not c.rated]
    assert (got.cdrs, got.unrated) == (len(cdrs), len(unrated))
    assert got.timed_out == sum(c.timed_out for c in unrated)
    for flag in REASONS:
        assert getattr(got, flag) == sum(flag in c.flags for c in unrated), flag
    assert got.unexplained == 0
    # Destinations without a rate by country, most first.
    by_country: dict[str, int] = {}
    for c in unrated:
        if "no_rate" in c.flags:
            dest = c.destination.removeprefix("tel:").removeprefix("+")
            region = region_of(dest)
            name = (
                country_name(region)
                if region and region != "001"
                else "Global Mobile Satellite System"
            )
            by_country[name] = by_country.get(name, 0) + 1
    assert dict(got.no_rate_destinations) == by_country
    assert [n for _, n in got.no_rate_destinations] == sorted(by_country.values(), reverse=True)
    trunks = {c.trunk for c in unrated if "unknown_trunk" in c.flags}
    assert {name for name, _ in got.unknown_trunks} == trunks
    lines = unrated_lines(got)
    assert lines[0].split()[:2] == ["unrated", str(len(unrated))]
    text = "\n".join(lines)
    assert "Japan" in text and any(trunk in text for trunk in trunks)
