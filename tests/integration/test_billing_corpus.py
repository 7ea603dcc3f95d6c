"""The billing corpus (tests/data/billing): hand-written events whose every export cell was
worked out by hand from the product rules, not by running the pipeline.

(a) `replay` of the corpus into a fresh embedded store must give exactly the expected export
rows of both directions and the expected account, flags, rated, timed-out, status and CDR type
of every call, and dead-letter exactly the expected messages; (b) the same events produced to a
real broker and run through a worker and the sink must store the very same CDRs.

The corpus is dated around 2026-03-02 (`CORPUS_DAY`). The store only shows the last two
months and events may not lie in the future, so every date in it (event timestamps, rate
``effective_from`` values and the expected time cells) is moved by the same whole number of
days, to put `CORPUS_DAY` on yesterday. Nothing in the rules depends on the date itself.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import io
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from pipeline.chaos import read_dlq
from pipeline.core.correlate import DeadLetter, Deadlines
from pipeline.core.partitioning import partition_for
from pipeline.core.refdata import RefDataHolder
from pipeline.demo import Pipeline
from pipeline.kafka.topics import INPUT_TOPICS
from pipeline.replay import ReplaySummary, replay_file
from pipeline.simulate import SimMessage, produce
from pipeline.store.client import TABLES, connect
from pipeline.store.export import HEADERS, write_cdrs
from pipeline.store.queries import CdrFilter, select_cdrs
from pipeline.store.writer import CdrWriter

from .conftest import PARTITIONS, dump_store

DATA = Path(__file__).resolve().parents[1] / "data" / "billing"
CORPUS_DAY = date(2026, 3, 2)
DIRECTIONS = ("outbound", "inbound")
META_FIELDS = ("direction", "account", "flags", "rated", "timed_out", "status", "cdr_type")
LATER_TRAFFIC = "bc-z"  # ids of the calls that move event time past every deadline
DUPLICATES = 4  # bc-o45: start, connect and end sent twice; bc-i19: start sent twice
_TS = re.compile(rb'("ts": ")([0-9]{4}-[0-9]{2}-[0-9]{2})')
# Deadlines that would change the outcome of the corpus if the environment had them.
_ENV = (
    "CDRPIPE_BILL_TIMED_OUT",
    "CDRPIPE_MAX_CALL_S",
    "CDRPIPE_ORPHAN_WAIT_S",
    "CDRPIPE_MEMORY_S",
    "CDRPIPE_PARTITIONS",
)


@dataclass(frozen=True)
class Corpus:
    """The corpus moved to recent dates, in files under a temporary directory."""

    events: Path
    config: Path
    lines: list[bytes]
    expected: dict[str, list[list[str]]]  # direction -> header + rows
    meta: dict[str, dict[str, str]]  # call id -> expected-meta.csv row

    def cdr_ids(self) -> set[str]:
        return {i for i, m in self.meta.items() if m["direction"]}

    def dead_letters(self) -> set[tuple[str, str, str]]:
        """(call id, DLQ kind, event kind) of every message expected in the DLQ."""
        out = set()
        for call_id, m in self.meta.items():
            for item in filter(None, m["dead_letter"].split("|")):
                kind, _, event = item.partition(":")
                out.add((call_id, kind, event))
        return out


def shift_day(text: str, days: int) -> str:
    """`text` starting with an ISO date, that date moved by `days`; "" stays ""."""
    if not text:
        return text
    return (date.fromisoformat(text[:10]) + timedelta(days=days)).isoformat() + text[10:]


def read_csv(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def write_csv(path: Path, rows: list[list[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    days = (datetime.now(UTC).date() - timedelta(days=1) - CORPUS_DAY).days
    root = tmp_path_factory.mktemp("billing")

    def move(m: re.Match[bytes]) -> bytes:
        return m.group(1) + shift_day(m.group(2).decode(), days).encode()

    lines = [_TS.sub(move, raw) for raw in (DATA / "events.jsonl").read_bytes().splitlines()]
    events = root / "events.jsonl"
    events.write_bytes(b"".join(line + b"\n" for line in lines))

    config = root / "config"
    config.mkdir()
    rates = read_csv(DATA / "config" / "rates.csv")
    write_csv(
        config / "rates.csv", [rates[0]] + [[*r[:-1], shift_day(r[-1], days)] for r in rates[1:]]
    )
    for name in ("trunks.csv", "dids.csv"):
        (config / name).write_bytes((DATA / "config" / name).read_bytes())

    expected = {}
    for direction in DIRECTIONS:
        header, *rows = read_csv(DATA / f"expected-{direction}.csv")
        expected[direction] = [header] + [
            [shift_day(cell, days) if i < 3 else cell for i, cell in enumerate(row)] for row in rows
        ]
    with (DATA / "expected-meta.csv").open(newline="", encoding="utf-8") as f:
        meta = {row["id"]: row for row in csv.DictReader(f)}
    return Corpus(events, config, lines, expected, meta)


@pytest.fixture(autouse=True)
def default_settings(monkeypatch) -> None:
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)


# --- checks ------------------------------------------------------------------------------


def export_problems(client, corpus: Corpus) -> list[str]:
    """Every cell of the stored CDRs' export that differs from the expected CSVs."""
    problems = []
    for direction in DIRECTIONS:
        cdrs = sorted(
            select_cdrs(client, CdrFilter(direction=direction)), key=lambda c: (c.start_time, c.id)
        )
        out = io.StringIO()
        write_cdrs(direction, cdrs, out)
        header, *rows = list(csv.reader(io.StringIO(out.getvalue())))
        want_header, *want_rows = corpus.expected[direction]
        if header != want_header or header != HEADERS[direction]:
            problems.append(f"{direction} header: expected {want_header}, got {header}")
        got = {row[0]: (cdr.id, row) for cdr, row in zip(cdrs, rows, strict=True)}
        want = {row[0]: row for row in want_rows}
        for start in sorted(want.keys() - got.keys()):
            problems.append(f"{direction} row starting {start}: missing")
        for start in sorted(got.keys() - want.keys()):
            problems.append(f"{direction} {got[start][0]} starting {start}: not expected")
        for start in sorted(want.keys() & got.keys()):
            call_id, row = got[start]
            for column, e, g in zip(want_header, want[start], row, strict=True):
                if e != g:
                    problems.append(f"{direction} {call_id} {column}: expected {e!r}, got {g!r}")
        if got.keys() == want.keys() and [r[0] for r in rows] != [r[0] for r in want_rows]:
            problems.append(f"{direction}: rows not in the expected order")
    return problems


def meta_problems(client, corpus: Corpus) -> list[str]:
    """Account, flags, rated, timed-out, status and CDR type of every stored call, read from
    the tables (FINAL: the newest version of each call), against expected-meta.csv."""
    stored: dict[str, dict[str, str]] = {}
    for direction, table in TABLES.items():
        result = client.query(
            f"SELECT id, account, flags, rated, timed_out, status, cdr_type FROM {table} FINAL"
        )
        for call_id, account, flags, rated, timed_out, status, cdr_type in result.result_rows:
            if call_id in stored:
                stored[call_id]["direction"] += " and " + direction
                continue
            stored[call_id] = {
                "direction": direction,
                "account": account,
                "flags": "|".join(sorted(flags)),
                "rated": str(bool(rated)).lower(),
                "timed_out": str(bool(timed_out)).lower(),
                "status": status,
                "cdr_type": cdr_type,
            }
    problems = []
    want_ids = corpus.cdr_ids()
    for call_id in sorted(want_ids - stored.keys()):
        problems.append(f"{call_id}: no CDR stored")
    for call_id in sorted(stored.keys() - want_ids):
        problems.append(f"{call_id}: CDR stored, none expected")
    for call_id in sorted(want_ids & stored.keys()):
        for name in META_FIELDS:
            e, g = corpus.meta[call_id][name], stored[call_id][name]
            if e != g:
                problems.append(f"{call_id} {name}: expected {e!r}, got {g!r}")
    return problems


def store_problems(dsn: str, corpus: Corpus) -> list[str]:
    client = connect(dsn)
    try:
        return export_problems(client, corpus) + meta_problems(client, corpus)
    finally:
        client.close()


def dead_letter_key(raw: bytes, kind: str) -> tuple[str, str, str]:
    data = orjson.loads(raw)
    return (data["id"], kind, data["event"])


def replay(
    corpus: Corpus, store: Path, settings: Deadlines | None = None
) -> tuple[str, ReplaySummary, list[DeadLetter]]:
    dsn = f"chdb://{store}"
    dead: list[DeadLetter] = []
    client = connect(dsn)
    try:
        summary = replay_file(
            corpus.events,
            RefDataHolder(corpus.config),
            CdrWriter(client).write,
            settings=settings,
            partitions=PARTITIONS,
            dead_letter=lambda _line, d: dead.append(d),
        )
    finally:
        client.close()
    return dsn, summary, dead


# --- tests -------------------------------------------------------------------------------


def test_corpus_is_consistent(corpus):
    """The corpus itself: one meta row per call, distinct start times (the expected rows are
    matched on them), and later traffic on every partition so that the timed-out calls and
    orphans are closed on event time (their partition's topics all pass the deadline)."""
    events = [orjson.loads(line) for line in corpus.lines]
    ids = {e["id"] for e in events}
    assert ids == set(corpus.meta)
    starts = [row[0] for d in DIRECTIONS for row in corpus.expected[d][1:]]
    assert len(starts) == len(set(starts)) == len(corpus.cdr_ids())
    later = {i for i in ids if i.startswith(LATER_TRAFFIC)}
    assert {partition_for(i, PARTITIONS) for i in later} == set(range(PARTITIONS))
    assert all(
        {e["event"] for e in events if e["id"] == i} == {"start", "connect", "end"} for i in later
    )


def test_replay_gives_the_hand_computed_cdrs(corpus, tmp_path):
    dsn, summary, dead = replay(corpus, tmp_path / "store")
    problems = store_problems(dsn, corpus)
    got_dead = {dead_letter_key(d.raw, d.kind) for d in dead}
    if got_dead != corpus.dead_letters():
        problems.append(
            f"dead letters: expected {sorted(corpus.dead_letters())}, got {sorted(got_dead)}"
        )
    unrated = sum(m["rated"] == "false" for m in corpus.meta.values())
    timed_out = sum(m["timed_out"] == "true" for m in corpus.meta.values())
    counts = {
        "cdrs": (summary.cdrs, len(corpus.cdr_ids())),
        "unrated": (summary.unrated, unrated),
        "timed_out": (summary.timed_out, timed_out),
        "duplicates": (summary.duplicates, DUPLICATES),
        "still_open": (summary.still_open, 0),
        "dead_lettered": (summary.dead_lettered, len(corpus.dead_letters())),
    }
    problems += [f"summary {k}: expected {e}, got {g}" for k, (g, e) in counts.items() if g != e]
    assert not problems, f"{len(problems)} differences:\n" + "\n".join(problems)


# With CDRPIPE_BILL_TIMED_OUT=1 the two calls closed as timed out are billed up to the deadline
# (start + 4 h); by start time of day, the cells that change:
BILLED_TO_DEADLINE = {
    # bc-o03: 14393 s on bc-std 49 Local (0.01, 60/60): 60 + ceil(14333 / 60) * 60 = 14400 s,
    # 240 min * 0.01 = 2.400000
    ("outbound", "00:10:00"): {
        "Billing Duration": "14400",
        "Rate (USD per minute)": "0.01",
        "Charged (USD)": "2.400000",
    },
    # bc-i01: 14370 s on DID 442071838750 (metered 0.006, 30/6): 30 + 2390 * 6 = 14370 s,
    # 14370 * 0.006 / 60 = 1.437000; its destination is a sip: URI (no termination)
    ("inbound", "00:12:00"): {"Metered Channels Amount (USD)": "1.437000"},
}


def test_replay_can_bill_timed_out_calls_to_the_deadline(corpus, tmp_path):
    """The operator setting: timed-out calls rated up to the deadline, still flagged timed out
    (no disconnect code, reason "Timed out"); nothing else changes."""
    expected = {d: [list(row) for row in rows] for d, rows in corpus.expected.items()}
    for (direction, time_of_day), cells in BILLED_TO_DEADLINE.items():
        header = expected[direction][0]
        (row,) = [r for r in expected[direction][1:] if r[0].endswith(" " + time_of_day)]
        for column, value in cells.items():
            row[header.index(column)] = value
    meta = {i: dict(m) for i, m in corpus.meta.items()}
    for call_id in ("bc-o03", "bc-i01"):
        assert meta[call_id]["timed_out"] == "true"
        meta[call_id]["rated"] = "true"
    billed = dataclasses.replace(corpus, expected=expected, meta=meta)
    dsn, summary, _ = replay(billed, tmp_path / "store", Deadlines(bill_timed_out=True))
    problems = store_problems(dsn, billed)
    assert not problems, f"{len(problems)} differences:\n" + "\n".join(problems)
    assert summary.timed_out == 2


@pytest.mark.kafka
@pytest.mark.parametrize("engine", ["batch", "faust"])
def test_stream_stores_the_same_cdrs(broker, corpus, tmp_path, engine, monkeypatch):
    """The corpus produced to the three topics (keyed by call id, in file order) and run
    through a worker and the sink, on event time only (no wall-clock idle advance)."""
    monkeypatch.setenv("CDRPIPE_WORKER_ENGINE", engine)
    topics = {topic.rsplit(".", 1)[1]: topic for topic in INPUT_TOPICS}
    messages = []
    for line in corpus.lines:
        event = orjson.loads(line)
        messages.append(SimMessage(topics[event["event"]], event["id"].encode(), line))
    store = f"chdb://{tmp_path / 'stream-store'}"
    env = {
        "CDRPIPE_DATA": str(tmp_path / "data"),
        "CDRPIPE_CONFIG": str(corpus.config),
        "CDRPIPE_IDLE_AFTER_S": "100000",
    }
    pipeline = Pipeline(broker.bootstrap, store, tmp_path / "logs", 1, env)
    pipeline.start()
    try:
        asyncio.run(produce(messages, broker.bootstrap))
        lags = pipeline.wait_stored(timeout_s=300, settle_s=4)
        pipeline.check_alive()
    finally:
        pipeline.stop()
    assert all(v == 0 for v in lags.values()), lags

    problems = store_problems(store, corpus)
    dead = read_dlq(broker.bootstrap)
    got_dead = {dead_letter_key(m.value, dict(m.headers)["dlq.kind"].decode()) for m in dead}
    if got_dead != corpus.dead_letters() or len(dead) != len(got_dead):
        problems.append(
            f"dead letters: expected {sorted(corpus.dead_letters())}, got {sorted(got_dead)}"
        )
    assert not problems, f"{len(problems)} differences:\n" + "\n".join(problems)

    # and field for field what the replay stores (the revision counts versions, not content)
    replay_dsn, _, _ = replay(corpus, tmp_path / "replay-store")
    streamed, replayed = dump_store(store), dump_store(replay_dsn)
    assert streamed.keys() == replayed.keys()
    differ = [
        (streamed[k], replayed[k])
        for k in sorted(streamed)
        if dataclasses.replace(streamed[k], revision=0)
        != dataclasses.replace(replayed[k], revision=0)
    ]
    assert not differ, f"{len(differ)} CDRs differ, e.g. {differ[0][0]} != {differ[0][1]}"
