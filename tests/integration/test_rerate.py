"""Re-rating against a real embedded store: amounts, versions, no duplicates, unrated -> rated.

The store holds a replay of simulated traffic (with calls closed as timed out) plus a few
hand-built calls of an account of their own whose amounts are computed by hand below. Then a
rate changes in a copy of the sample decks and Japan gets rates it lacked (the samples have
none, so the simulator's calls to 81... are unrated), and `rerate` runs.

chDB allows one data directory per process at a time: every client is closed before the test
ends. Times are relative to now because rows older than the two-month TTL disappear.
"""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from pipeline.core.cdr import build_cdr
from pipeline.core.correlate import Deadlines
from pipeline.core.model import CDR, Event
from pipeline.core.refdata import RefDataHolder, load_refdata
from pipeline.replay import replay_file
from pipeline.rerate import add_rerate_parser, events_of, rerate, rerated
from pipeline.simulate import SimConfig, generate, write_jsonl
from pipeline.store.client import Client, connect
from pipeline.store.queries import CdrFilter, select_cdrs
from pipeline.store.writer import CdrWriter

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "config"
NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
SIM_START = NOW - timedelta(days=3)
HAND_START = NOW - timedelta(days=2)
WINDOW = (NOW - timedelta(days=4), NOW)
ACCOUNT = "acc-hand"  # the hand-built calls' account: its totals are exactly known
# The hand-built calls' trunk and DID, owned by ACCOUNT (added to a copy of the samples).
HAND_TRUNK = "Hand Trunk,acc-hand,standard,,\n"
HAND_DID = "493012345670,acc-hand,,,term,1,1\n"

# rates.csv edits: Germany fixed on the standard deck from 0.0120 to 0.0180 per minute, and
# Japan added to the standard deck (with a fee and per-minute steps) and the termination deck.
OLD_DE = "standard,49,Germany,Fixed,,0.0120,,0,1,1,2020-01-01"
NEW_DE = "standard,49,Germany,Fixed,,0.0180,,0,1,1,2020-01-01"
JAPAN = (
    "standard,81,Japan,Fixed,,0.0900,,0.0100,60,60,2020-01-01\n"
    "term,81,Japan,Fixed,,0.0500,,0,1,1,2020-01-01\n"
)


def ev(kind: str, call: str, at: datetime, **fields: object) -> Event:
    return Event(kind=kind, id=call, ts=at, **fields)  # type: ignore[arg-type]


def hand_cdrs(refdata) -> list[CDR]:
    """Four calls of ACCOUNT, rated with the sample decks as the workers would have."""
    t = HAND_START
    out = dict(gateway="gw-hand", direction="outbound", account=ACCOUNT, trunk="Hand Trunk")
    bye = dict(disconnect_code=200, disconnect_reason="Bye", disconnect_initiator="origination")
    calls = []
    # 1. Germany fixed, answered 125 s: 125 * 0.0120 / 60 = 0.025000 -> 0.0180: 0.037500
    s = ev("start", "hand-de", t, source="12125550100", destination="493012345678", **out)
    calls.append(
        build_cdr(
            s,
            ev("connect", "hand-de", t + timedelta(seconds=3)),
            ev("end", "hand-de", t + timedelta(seconds=128), **bye),
            refdata,
        )
    )
    # 2. Japan, answered 61 s: unrated -> fee 0.01 + 60 * 0.09/60 + 60 * 0.09/60 = 0.190000
    s = ev("start", "hand-jp", t + timedelta(minutes=1), source="12125550100",
           destination="81312345678", **out)  # fmt: skip
    calls.append(
        build_cdr(
            s,
            ev("connect", "hand-jp", t + timedelta(minutes=1, seconds=2)),
            ev("end", "hand-jp", t + timedelta(minutes=1, seconds=62, microseconds=1), **bye),
            refdata,
        )
    )
    # 3. UK fixed, closed as timed out 4 h after start, connected after 5 s: stored unrated
    #    (a timed-out call is not billed by default), and re-rating leaves it so.
    s = ev("start", "hand-uk", t + timedelta(minutes=2), source="12125550100",
           destination="442079460999", **out)  # fmt: skip
    calls.append(
        build_cdr(
            s,
            ev("connect", "hand-uk", t + timedelta(minutes=2, seconds=5)),
            None,
            refdata,
            timed_out_at=t + timedelta(minutes=2, hours=4),
        )
    )
    # 4. Inbound to DID 493012345670 (term deck, 1/1 increments) sent on to a Japanese number:
    #    no termination rate -> unrated; after: 30 s * 0.0500 / 60 = 0.025000
    s = ev("start", "hand-in", t + timedelta(minutes=3), gateway="gw-hand", direction="inbound",
           account=ACCOUNT, source="442079460555", destination="tel:+81312345678",
           did="493012345670")  # fmt: skip
    calls.append(
        build_cdr(
            s,
            ev("connect", "hand-in", t + timedelta(minutes=3, seconds=1)),
            ev(
                "end",
                "hand-in",
                t + timedelta(minutes=3, seconds=31),
                disconnect_code=200,
                disconnect_reason="Bye",
                disconnect_initiator="destination",
            ),  # fmt: skip
            refdata,
        )
    )
    return calls


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    target = tmp_path / "config"
    shutil.copytree(CONFIG, target)
    with (target / "trunks.csv").open("a", encoding="utf-8") as f:
        f.write(HAND_TRUNK)
    with (target / "dids.csv").open("a", encoding="utf-8") as f:
        f.write(HAND_DID)
    return target


def change_rates(config_dir: Path) -> None:
    rates = config_dir / "rates.csv"
    text = rates.read_text(encoding="utf-8")
    assert OLD_DE in text
    rates.write_text(text.replace(OLD_DE, NEW_DE) + JAPAN, encoding="utf-8")


@pytest.fixture
def store(tmp_path: Path, config_dir: Path) -> Iterator[Client]:
    """A store with a replay of 3000 simulated calls and the hand-built calls."""
    cfg = SimConfig(
        calls=3000, seed=66, config_dir=str(CONFIG), start=SIM_START, call_rate=1.0,
        duplicate=0.02, reorder=0.02, late=0.01, never_ending=0.01,
    )  # fmt: skip
    events = tmp_path / "events.jsonl"
    write_jsonl(generate(cfg).messages, events)
    client = connect(f"chdb://{tmp_path / 'store'}")
    try:
        writer = CdrWriter(client)
        settings = Deadlines(
            max_call_duration=timedelta(minutes=15),
            orphan_wait=timedelta(minutes=2),
            memory=timedelta(hours=24),
        )
        summary = replay_file(events, RefDataHolder(config_dir), writer.write, settings=settings)
        assert summary.timed_out > 0 and summary.unrated > 0
        writer.write(hand_cdrs(load_refdata(config_dir)))
        yield client
    finally:
        client.close()


def stored(client: Client) -> dict[str, CDR]:
    return {
        c.id: c
        for d in ("outbound", "inbound")
        for c in select_cdrs(client, CdrFilter(direction=d, time_from=WINDOW[0], time_to=WINDOW[1]))
    }


def raw_rows(client: Client) -> int:
    """Rows as stored, every version counted (no FINAL)."""
    return sum(
        client.query(f"SELECT count() FROM {table}").result_rows[0][0]
        for table in ("cdr_outbound", "cdr_inbound")
    )


def test_events_of_rebuilds_every_stored_cdr_exactly(store: Client, config_dir: Path) -> None:
    """The events rebuilt from a CDR give that CDR back with unchanged reference data."""
    refdata = load_refdata(config_dir)
    before = stored(store)
    assert any(c.timed_out for c in before.values()) and any(not c.rated for c in before.values())
    assert all(rerated(c, refdata) is None for c in before.values())
    start, connect_, end, timed_out_at = events_of(before["hand-uk"])
    assert end is None and timed_out_at == before["hand-uk"].end_time and connect_ is not None
    summary = rerate(store, refdata, *WINDOW)
    assert summary.changed == summary.written == 0
    assert summary.count == len(before)
    assert raw_rows(store) == len(before)


def test_rerate_amounts_versions_and_unrated(store: Client, config_dir: Path) -> None:
    before = stored(store)
    rows_before = raw_rows(store)
    assert before["hand-de"].charged == Decimal("0.025000")
    assert not before["hand-jp"].rated and before["hand-jp"].charged is None
    assert before["hand-uk"].charged is None and before["hand-uk"].timed_out
    assert not before["hand-uk"].rated
    assert not before["hand-in"].rated and before["hand-in"].termination_amount is None

    change_rates(config_dir)
    refdata = load_refdata(config_dir)

    # A dry run reports what a real run does and writes nothing.
    dry = rerate(store, refdata, *WINDOW, dry_run=True)
    assert dry.changed > 0 and raw_rows(store) == rows_before
    assert stored(store) == before

    summary = rerate(store, refdata, *WINDOW)
    after = stored(store)
    assert summary.changed == summary.written == dry.changed
    assert summary.count == len(before) == len(after)

    # Hand-computed amounts.
    de, jp, uk, inbound = (after[k] for k in ("hand-de", "hand-jp", "hand-uk", "hand-in"))
    assert (de.rate, de.charged, de.billing_duration) == (Decimal("0.018"), Decimal("0.0375"), 125)
    assert jp.rated and jp.duration == 61 and jp.billing_duration == 120
    assert jp.rate == Decimal("0.09") and jp.charged == Decimal("0.190000")
    assert (jp.country_name, jp.network_name) == ("Japan", "Fixed")
    assert uk == before["hand-uk"]  # unchanged: not rewritten, still revision 1
    assert inbound.rated and inbound.termination_amount == Decimal("0.025000")
    mine = summary.accounts[("outbound", ACCOUNT)]
    assert (mine.count, mine.changed, mine.unrated_before, mine.unrated_after) == (3, 2, 2, 1)
    assert mine.charged_before == Decimal("0.025") and mine.charged_after == Decimal("0.2275")
    mine_in = summary.accounts[("inbound", ACCOUNT)]
    assert (mine_in.changed, mine_in.unrated_before, mine_in.unrated_after) == (1, 1, 0)

    # Versions: changed calls moved to revision + 1, the rest kept theirs; one row per id with
    # FINAL and exactly one extra stored version per changed call.
    changed = {k for k in before if after[k] != before[k]}
    assert len(changed) == summary.changed
    for k in before:
        assert after[k].revision == before[k].revision + (k in changed)
    assert raw_rows(store) == rows_before + len(changed)
    for table in ("cdr_outbound", "cdr_inbound"):
        total, ids = store.query(f"SELECT count(), uniqExact(id) FROM {table} FINAL").result_rows[0]
        assert total == ids
        store.command(f"OPTIMIZE TABLE {table} FINAL")
    assert raw_rows(store) == len(after)

    # Simulated traffic: Germany fixed on the standard deck is billed per second without a fee,
    # so each such answered call now costs exactly 1.5 times as much.
    standard = {"Outbound Trunk 1", "Outbound Trunk 3", "Outbound Trunk 4"}
    german = [
        k for k, c in before.items()
        if c.direction == "outbound" and c.trunk in standard and c.rate == Decimal("0.012")
    ]  # fmt: skip
    assert german
    for k in german:
        assert after[k].rate == Decimal("0.018")
        assert after[k].charged == before[k].charged * Decimal("1.5")
    # ... and no call to Japan on a standard-deck trunk is unrated any more.
    japan = [
        k for k, c in before.items()
        if c.direction == "outbound" and c.trunk in standard and c.destination.startswith("81")
    ]  # fmt: skip
    assert japan and all(not before[k].rated for k in japan)
    assert all(after[k].rated and after[k].country_name == "Japan" for k in japan)
    total_unrated_before = sum(a.unrated_before for a in summary.accounts.values())
    total_unrated_after = sum(a.unrated_after for a in summary.accounts.values())
    assert total_unrated_after == sum(not c.rated for c in after.values())
    assert total_unrated_before - total_unrated_after >= len(japan) + 1  # + hand-in

    # Re-running changes nothing.
    again = rerate(store, refdata, *WINDOW)
    assert again.changed == again.written == 0
    assert stored(store) == after


def test_rerate_account_filter(store: Client, config_dir: Path) -> None:
    before = stored(store)
    change_rates(config_dir)
    summary = rerate(store, load_refdata(config_dir), *WINDOW, account=ACCOUNT)
    assert set(summary.accounts) == {("outbound", ACCOUNT), ("inbound", ACCOUNT)}
    assert summary.changed == 3
    after = stored(store)
    assert all(after[k] == c for k, c in before.items() if c.account != ACCOUNT)
    assert after["hand-de"].revision == before["hand-de"].revision + 1


def test_rerate_command_line(tmp_path: Path, config_dir: Path, capsys) -> None:
    dsn = f"chdb://{tmp_path / 'cli-store'}"
    client = connect(dsn)
    try:
        CdrWriter(client).write(hand_cdrs(load_refdata(config_dir)))
    finally:
        client.close()
    change_rates(config_dir)
    parser = argparse.ArgumentParser(prog="cdrpipe")
    add_rerate_parser(parser.add_subparsers(dest="command", required=True))
    argv = ["rerate", "--from", WINDOW[0].isoformat(), "--to", WINDOW[1].isoformat(),
            "--config", str(config_dir), "--store", dsn]  # fmt: skip

    args = parser.parse_args([*argv, "--dry-run"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "3 changed, 3 new revisions would be written (dry run)" in out

    args = parser.parse_args(argv)
    assert args.func(args) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    row = next(line.split() for line in lines if line.startswith("outbound") and ACCOUNT in line)
    assert row[2:] == ["3", "2", "2", "1", "0.025000", "0.227500", "0.202500"]
    assert "4 CDRs read, 3 changed, 3 new revisions written" in captured.out
    assert "warning" in captured.err  # the window reaches into the workers' memory

    args = parser.parse_args(argv)
    assert args.func(args) == 0
    assert "0 changed" in capsys.readouterr().out

    bad = parser.parse_args(["rerate", "--from", "yesterday", "--to", "2026-01-01"])
    assert bad.func(bad) == 2
    assert "time_from" in capsys.readouterr().err


def test_rerating_never_moves_a_call_to_another_account(config_dir: Path) -> None:
    """The stored account is part of the row's key and the event's own account is gone: a
    re-rating keeps both the account and a mismatch found when the call was first rated."""
    refdata = load_refdata(config_dir)
    t = HAND_START
    start = ev("start", "mis", t, gateway="gw", direction="outbound", account="acc-9999",
               source="12125550100", destination="493012345678", trunk="Hand Trunk")  # fmt: skip
    bye = dict(disconnect_code=200, disconnect_reason="Bye", disconnect_initiator="origination")
    first = build_cdr(
        start, ev("connect", "mis", t), ev("end", "mis", t + timedelta(seconds=60), **bye), refdata
    )
    assert first.account == ACCOUNT and first.flags == ("account_mismatch",)
    assert rerated(first, refdata) is None  # nothing changes with the same data
    change_rates(config_dir)
    trunks = config_dir / "trunks.csv"
    trunks.write_text(trunks.read_text().replace("Hand Trunk,acc-hand", "Hand Trunk,acc-other"))
    new = rerated(first, load_refdata(config_dir))
    assert new is not None and new.charged != first.charged
    assert (new.account, new.flags) == (ACCOUNT, ("account_mismatch",))


def test_rerating_keeps_a_duration_measured_beyond_microseconds(config_dir: Path) -> None:
    """Stored times stop at microseconds; a duration that was one second longer because of
    the digits beyond comes out the same when the call is rebuilt."""
    refdata = load_refdata(config_dir)
    t = HAND_START
    start = ev("start", "ns", t, gateway="gw", direction="outbound", account=ACCOUNT,
               source="12125550100", destination="493012345678", trunk="Hand Trunk")  # fmt: skip
    connect = Event(kind="connect", id="ns", ts=t, ts_sub_us="1")
    end = Event(kind="end", id="ns", ts=t + timedelta(seconds=10), ts_sub_us="2",
                disconnect_code=200, disconnect_reason="Bye",
                disconnect_initiator="origination")  # fmt: skip
    cdr = build_cdr(start, connect, end, refdata)
    assert cdr.duration == 11
    assert rerated(cdr, refdata) is None
    change_rates(config_dir)
    new = rerated(cdr, load_refdata(config_dir))
    assert new is not None and new.duration == 11 and new.billing_duration == 11
