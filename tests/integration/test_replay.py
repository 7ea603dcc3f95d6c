"""`cdrpipe replay` of a large generated file into a fresh embedded store.

Counts and totals are checked against the simulator's ground truth, and a
sample of stored rows field by field against an oracle written here from the
SPEC with plain arithmetic over the CSV files (not the pipeline's rating code).
A second replay of the same file must not double anything.
"""

from __future__ import annotations

import csv
import math
import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import orjson
import phonenumbers
import pycountry
import pytest

from pipeline.cli import main as cli_main
from pipeline.simulate import SimConfig, generate, write_jsonl
from pipeline.store.client import connect
from pipeline.store.queries import CdrFilter, count_cdrs, select_cdrs, totals

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "config"
CALLS = 50_000
EEA = {
    "AT",
    "BE",
    "BG",
    "HR",
    "CY",
    "CZ",
    "DK",
    "EE",
    "FI",
    "FR",
    "DE",
    "GR",
    "HU",
    "IE",
    "IT",
    "LV",
    "LT",
    "LU",
    "MT",
    "NL",
    "PL",
    "PT",
    "RO",
    "SK",
    "SI",
    "ES",
    "SE",
    "IS",
    "LI",
    "NO",
    "RE",
    "GP",
    "MQ",
    "GF",
    "YT",
    "MF",
    "AX",
}


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> tuple[Path, dict, list]:
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=6)
    cfg = SimConfig(
        calls=CALLS,
        seed=2024,
        config_dir=str(CONFIG),
        start=start,
        reorder=0.05,
        duplicate=0.05,
        late=0.02,
        orphan=0.01,
        never_ending=0.01,
        malformed=0.01,
    )
    sim = generate(cfg)
    path = tmp_path_factory.mktemp("events") / "events.jsonl"
    write_jsonl(sim.messages, path)
    return path, sim.expected, sim.messages


@pytest.fixture(scope="module")
def replayed(tmp_path_factory) -> str:
    return f"chdb://{tmp_path_factory.mktemp('store')}"


def run_replay(path: Path, store: str, capsys) -> dict[str, str]:
    assert cli_main(["replay", str(path), "--config", str(CONFIG), "--store", store]) == 0
    out = capsys.readouterr().out
    summary = {}
    for line in out.splitlines():
        key, _, value = line.strip().partition("  ")
        summary[key.strip()] = value.strip()
    return summary


def test_replay_counts_totals_rows_and_idempotency(simulated, replayed, capsys, monkeypatch):
    path, expected, messages = simulated
    # Short deadlines so never-ending calls and orphans are closed within the file's span.
    monkeypatch.setenv("CDRPIPE_MAX_CALL_S", "900")
    monkeypatch.setenv("CDRPIPE_ORPHAN_WAIT_S", "120")
    first = run_replay(path, replayed, capsys)
    complete = expected["calls_with_start_and_end"]
    never_ending = expected["never_ending"]
    assert int(first["CDRs written"]) >= complete
    assert int(first["duplicates"]) == expected["duplicate_messages"]
    dlq = first["dead-lettered"]
    assert f"invalid {expected['malformed_messages']}" in dlq
    assert int(dlq.split()[0]) >= expected["malformed_messages"]

    client = connect(replayed)
    try:
        wide = dict(time_from=datetime.now(UTC) - timedelta(days=2), time_to=datetime.now(UTC))
        out_t = totals(client, CdrFilter(direction="outbound", **wide))
        in_t = totals(client, CdrFilter(direction="inbound", **wide))
        stored = out_t.count + in_t.count
        assert stored == int(first["CDRs written"])
        # every call with a start is stored (never-ending ones as timed out, unless still open)
        still_open = int(first["still open"])
        assert stored + still_open >= complete + never_ending
        assert stored <= complete + never_ending
        assert out_t.timed_out + in_t.timed_out == int(first["timed out"]) > 0
        assert out_t.timed_out + in_t.timed_out <= never_ending
        assert out_t.unrated + in_t.unrated == int(first["unrated"]) > 0
        by_id = {
            c.id: c
            for d in ("outbound", "inbound")
            for c in select_cdrs(client, CdrFilter(direction=d, **wide))
        }
        assert len(by_id) == stored
        check_sample(by_id, messages)
        charged_before = out_t.charged
    finally:
        client.close()

    second = run_replay(path, replayed, capsys)
    assert second["CDRs written"] == first["CDRs written"]
    client = connect(replayed)
    try:
        again = totals(client, CdrFilter(direction="outbound", **wide))
        assert again.count == out_t.count and again.charged == charged_before
        assert count_cdrs(client, CdrFilter(direction="inbound", **wide)) == in_t.count
    finally:
        client.close()


# --- oracle ------------------------------------------------------------------------------


def ts(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def region(digits: str) -> str | None:
    """The country of a valid number; an invalid one has none."""
    if not digits:
        return None
    num = phonenumbers.parse("+" + digits)
    return phonenumbers.region_code_for_number(num) if phonenumbers.is_valid_number(num) else None


NETWORKS = {
    phonenumbers.PhoneNumberType.FIXED_LINE: "Fixed",
    phonenumbers.PhoneNumberType.MOBILE: "Mobile",
    phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE: "Fixed or mobile",
    phonenumbers.PhoneNumberType.TOLL_FREE: "Toll-free",
}


def names_of(digits: str) -> tuple[str, str]:
    """(ISO 3166 name, network) of a valid number, from pycountry and libphonenumber."""
    num = phonenumbers.parse("+" + digits)
    country = pycountry.countries.get(alpha_2=phonenumbers.region_code_for_number(num))
    name = getattr(country, "common_name", None) or country.name
    return name, NETWORKS.get(phonenumbers.number_type(num), "?")


def cdr_type(a: str | None, b: str | None) -> str:
    if a and a == b:
        return "Local"
    if a in EEA and b in EEA:
        return "Origin based"
    return "International"


def read_csv(name: str) -> list[dict[str, str]]:
    with (CONFIG / name).open(newline="") as f:
        return list(csv.DictReader(line for line in f if not line.lstrip().startswith("#")))


def pick_rate(deck: str, digits: str, category: str, at: datetime) -> dict | None:
    """Category first: the rows of the call's category (longest prefix, newest in force),
    only without any of them the uncategorised rows."""
    for wanted in (category, ""):
        best = None
        for row in read_csv("rates.csv"):
            when = datetime.fromisoformat(row["effective_from"]).replace(tzinfo=UTC)
            if row["deck"] != deck or not digits.startswith(row["prefix"]) or when > at:
                continue
            if row["category"] != wanted:
                continue
            rank = (len(row["prefix"]), when)
            if best is None or rank > best[0]:
                best = (rank, row)
        if best is not None:
            return best[1]
    return None


def money(fee: Decimal, first: Decimal, rest: Decimal, i: int, billed: int, d: int) -> Decimal:
    if d == 0:
        return Decimal("0.000000")
    total = fee + i * first / 60 + max(0, billed - i) * rest / 60
    return total.quantize(Decimal("0.000001"), ROUND_HALF_UP)


def billed(d: int, i: int, r: int) -> int:
    return 0 if d == 0 else i + (d > i) * math.ceil((d - i) / r) * r


def check_sample(by_id: dict, messages: list) -> None:
    events: dict[str, dict[str, dict]] = defaultdict(dict)
    for m in messages:
        try:
            obj = orjson.loads(m.value)
        except orjson.JSONDecodeError:
            continue
        if m.tag.startswith("malformed") or not isinstance(obj, dict):
            continue
        events[obj["id"]].setdefault(obj["event"], obj)
    trunks = {r["trunk"]: r for r in read_csv("trunks.csv")}
    dids = {r["did"]: r for r in read_csv("dids.csv")}
    complete = [i for i, e in events.items() if {"start", "end"} <= e.keys() and i in by_id]
    checked = 0
    for call_id in random.Random(5).sample(complete, 400):
        ev, cdr = events[call_id], by_id[call_id]
        start, end = ev["start"], ev["end"]
        connect = ev.get("connect")
        d = math.ceil((ts(end["ts"]) - ts(connect["ts"])).total_seconds()) if connect else 0
        d = max(d, 0)
        assert cdr.start_time == ts(start["ts"])
        assert cdr.end_time == ts(end["ts"])
        assert cdr.connect_time == (ts(connect["ts"]) if connect else None)
        assert cdr.duration == d, call_id
        code = end["disconnect_code"]
        status = (
            "answered"
            if connect
            else "busy"
            if code in (486, 600)
            else "no-answer"
            if code in (408, 480)
            else "cancelled"
            if code == 487 and end["disconnect_initiator"] == "origination"
            else "failed"
        )
        assert cdr.status == status
        assert (cdr.disconnect_code, cdr.disconnect_reason) == (code, end["disconnect_reason"])
        owner = (
            trunks[start["trunk"]]["account"]
            if start["direction"] == "outbound" and start["trunk"] in trunks
            else dids[start["did"]]["account"]
            if start["direction"] == "inbound" and start["did"] in dids
            else start["account"]
        )
        assert (cdr.account, cdr.gateway, cdr.source) == (owner, start["gateway"], start["source"])
        if start["direction"] == "outbound":
            trunk = trunks.get(start["trunk"])
            cli = (trunk["replace_cli"] or start["source"]) if trunk else start["source"]
            assert cdr.cli == cli
            origin = (trunk["origin_country"] if trunk else "") or region(cli)
            kind = cdr_type(origin, region(start["destination"]))
            assert cdr.cdr_type == kind
            row = (
                pick_rate(trunk["deck"], start["destination"], kind, cdr.start_time)
                if trunk
                else None
            )
            if row is None:
                assert not cdr.rated and cdr.charged is None and cdr.rate is None
                continue
            i, r = int(row["initial_increment"]), int(row["recurring_increment"])
            rate = Decimal(row["rate"])
            first = Decimal(row["initial_rate"] or row["rate"])
            assert cdr.rated and cdr.rate == rate
            assert cdr.billing_duration == billed(d, i, r)
            assert cdr.charged == money(
                Decimal(row["connection_fee"] or 0), first, rate, i, billed(d, i, r), d
            ), call_id
            name, network = names_of(start["destination"])
            assert (cdr.country_name, cdr.network_name) == (
                row["country"] or name,
                row["network"] or network,
            )
        else:
            did = dids[start["did"]]
            i = int(did["initial_increment"] or 1)
            r = int(did["recurring_increment"] or 1)
            b = billed(d, i, r)
            for rate_col, field in (
                ("toll_free_rate", "toll_free_amount"),
                ("metered_rate", "metered_amount"),
            ):
                rate = did[rate_col]
                got = getattr(cdr, field)
                assert got == (
                    money(Decimal(0), Decimal(rate), Decimal(rate), i, b, d) if rate else None
                ), (call_id, field)
            assert cdr.did == start["did"]
        checked += 1
    assert checked >= 200
