"""`replay --jobs N`: the same outcome as the one-process replay, whatever N.

A simulated file with every kind of trouble (reordering, duplicates, late events, orphans,
calls that never end, malformed lines) is replayed with short deadlines, so that calls time
out, are corrected, orphaned, forgotten and dead-lettered as late, by one process and by 2 and
3 workers; the sink batches (every field of every CDR version, by type and value), the dead
letters with their line numbers, the bad-line report and the summary counters must be equal.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.correlate import DeadLetter, Deadlines
from pipeline.core.events import InvalidEvent, parse_event
from pipeline.core.model import CDR
from pipeline.core.partitioning import call_key, murmur2, partition_for, partitions_for
from pipeline.core.refdata import RefDataHolder
from pipeline.replay import ReplaySummary, replay_file, resolve_jobs
from pipeline.replay.parallel import ParallelReplay
from pipeline.replay.transfer import MARSHAL, PICKLE, decode_cdrs, encode_cdrs
from pipeline.simulate import SimConfig, generate, write_jsonl
from pipeline.store.writer import decode_row

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "config"
SETTINGS = Deadlines(
    max_call_duration=timedelta(minutes=15),
    orphan_wait=timedelta(minutes=2),
    memory=timedelta(minutes=10),
)


@pytest.fixture(scope="module")
def refdata() -> RefDataHolder:
    return RefDataHolder(CONFIG)


@pytest.fixture(scope="module")
def events(tmp_path_factory) -> Path:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=6)
    cfg = SimConfig(
        calls=3000,
        seed=11,
        config_dir=str(CONFIG),
        start=start,
        call_rate=2.0,  # ~25 minutes of calls: deadlines and forgetting happen in the file
        reorder=0.05,
        duplicate=0.05,
        late=0.05,
        orphan=0.03,
        never_ending=0.03,
        malformed=0.02,
    )
    path = tmp_path_factory.mktemp("events") / "events.jsonl"
    write_jsonl(generate(cfg).messages, path)
    with path.open("ab") as f:  # lines the router cannot read an id from, and blank ones
        f.write(b'\n  \n{"id": 5}\n["id"]\n{"event":"start","\\u0069d":"x"}\n')
    return path


def strict(cdr: CDR) -> tuple:
    """Every field with its type and repr: Decimal("1.0") is not Decimal("1.00") here."""
    return tuple(
        (f.name, type(v).__name__, repr(v))
        for f in dataclasses.fields(CDR)
        for v in [getattr(cdr, f.name)]
    )


def replay(path: Path, refdata: RefDataHolder, jobs: int, **kwargs):
    batches: list[list[tuple]] = []
    dead: list[tuple[int, DeadLetter]] = []
    summary = replay_file(
        path,
        refdata,
        lambda batch: batches.append([strict(c) for c in batch]),
        jobs=jobs,
        settings=SETTINGS,
        dead_letter=lambda line, letter: dead.append((line, letter)),
        **kwargs,
    )
    return batches, dead, summary


def counted(summary: ReplaySummary) -> dict:
    return {f.name: getattr(summary, f.name) for f in dataclasses.fields(summary)} | {
        "seconds": None
    }


def test_parallel_replay_is_identical(events, refdata):
    # flush_every small enough that batches are cut in the middle of rounds
    one = replay(events, refdata, 1, flush_every=700)
    batches, dead, summary = one
    # the file exercises what could differ
    kinds = summary.dlq_by_kind
    assert kinds.get("invalid", 0) > 0 and kinds.get("orphan", 0) > 0, kinds
    assert kinds.get("late", 0) > 0, kinds
    assert summary.timed_out > 0 and summary.duplicates > 0 and summary.still_open > 0
    assert summary.unrated > 0 and len(batches) > 3
    revisions = {r for b in batches for c in b for name, _, r in c if name == "revision"}
    assert revisions - {"1"}, "no call was corrected after a timeout"
    for jobs in (2, 3):
        other = replay(events, refdata, jobs, flush_every=700)
        assert other[0] == batches, f"jobs={jobs}: CDR batches differ"
        assert other[1] == dead, f"jobs={jobs}: dead letters differ"
        assert counted(other[2]) == counted(summary), f"jobs={jobs}: summary differs"
    assert not multiprocessing.active_children()


class Rows:
    """A `RowSink` that keeps what it is given: batches of CDRs and of table rows."""

    def __init__(self) -> None:
        self.batches: list[list[CDR]] = []

    def write(self, cdrs) -> None:
        self.batches.append(list(cdrs))

    def write_rows(self, direction: str, rows) -> None:
        self.batches.append([decode_row(direction, row) for row in rows])


def test_rows_reach_a_row_sink_as_the_one_process_batches(events, refdata):
    """With a `RowSink`, workers send rows of the tables; the sink gets each batch of the
    one-process replay, split by direction, equal field by field."""
    one = replay(events, refdata, 1, flush_every=700)
    expected = [
        [c for c in batch if c[1][2] == repr(direction)]
        for batch in one[0]
        for direction in ("outbound", "inbound")
    ]
    sink = Rows()
    dead: list[tuple[int, DeadLetter]] = []
    summary = replay_file(
        events,
        refdata,
        sink,
        jobs=2,
        settings=SETTINGS,
        flush_every=700,
        dead_letter=lambda line, letter: dead.append((line, letter)),
    )
    got = [[strict(c) for c in batch] for batch in sink.batches]
    assert got == [b for b in expected if b] and len(got) > len(one[0])
    assert dead == one[1] and counted(summary) == counted(one[2])
    # one process writes CDR objects through the same sink's `write`
    sink = Rows()
    replay_file(events, refdata, sink, jobs=1, settings=SETTINGS, flush_every=700)
    assert [[strict(c) for c in batch] for batch in sink.batches] == one[0]


def test_more_jobs_than_partitions(events, refdata):
    one = replay(events, refdata, 1, partitions=2)
    many = replay(events, refdata, 5, partitions=2)  # capped at 2 workers
    assert many[0] == one[0] and many[1] == one[1]
    assert counted(many[2]) == counted(one[2])
    assert resolve_jobs(5, 2) == 2 and resolve_jobs(0, 64) >= 1 and resolve_jobs(1, 8) == 1
    with pytest.raises(ValueError):
        resolve_jobs(-1, 8)


def test_small_rounds_and_window(events, refdata):
    """Rounds of a few lines (many empty per worker) and one round in flight."""
    batches: list[list[CDR]] = []
    dead: list[tuple[int, DeadLetter]] = []
    replayer = ParallelReplay(
        refdata,
        batches.append,
        jobs=2,
        settings=SETTINGS,
        dead_letter=lambda line, letter: dead.append((line, letter)),
        chunk_lines=3,
        window=1,
    )
    with events.open("rb") as stream:
        from pipeline.replay import iter_lines

        summary = replayer.run(iter_lines(stream), name=events.name)
    one = replay(events, refdata, 1)
    assert [[strict(c) for c in b] for b in batches] == one[0]
    assert dead == one[1]
    assert counted(summary) == counted(one[2])


@pytest.mark.parametrize(
    "raw",
    [
        b'{"event":"start","id":"gw-1","ts":"2026-11-25T10:00:00Z"}',
        b'{"id" : "a\\"b", "event":"connect"}',
        b'{"id":"first","id":"last"}',
        b'{"\\u0069d":"escaped-key"}',
        b'{"x":{"id":"nested"},"id":"top"}',
        b'{"id":"caf\xc3\xa9"}',
        b'{"id":"\\u00e9t\\u00e9"}',
        b'{"id":"a","x":"id"}',
        b'{"x":{"id":"nested"},"\\u0069d":"escaped"}',
        b'{"event":"end","id":"","ts":"x"}',
    ],
)
def test_call_key_is_the_id_parse_event_reads(raw):
    expected = orjson.loads(raw)["id"].encode()
    assert call_key(raw) == expected
    assert partition_for(expected.decode(), 8) == partition_for(orjson.loads(raw)["id"], 8)


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        (b"not json", None),
        (b'{"id": 5}', None),
        (b'["id", "x"]', None),
        (b'{"id":"\\ud800"}', None),  # lone surrogate
        (b'{"id":"x"' + b" " * 70_000 + b"}", None),  # too large
        # keyed without parsing (call_key's fast path), invalid all the same
        (b'{"x":{"id":"nested"}}', b"nested"),
        (b'{"id":"\xff"}', b"\xff"),  # not UTF-8
        (b'{"id":"open', None),
    ],
)
def test_call_key_of_an_invalid_message(raw, key):
    """None or a key: either way the message is invalid, touches no call state, and any
    worker will do."""
    assert call_key(raw) == key
    with pytest.raises(InvalidEvent):
        parse_event(raw)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["id", "x", "i", 'd"', "gr\\id"]), inner, max_size=3)
    ),
    max_leaves=6,
)


@settings(max_examples=400, deadline=None)
@given(
    fields=st.lists(
        st.tuples(
            st.sampled_from(["id", "id", "event", "x", '"id"', "ts"]),
            st.sampled_from(["id", "gw-1", 'a"b', "a\\b", "caf\u00e9", ""]) | _JSON,
        ),
        max_size=5,
    ),
    spaced=st.booleans(),
)
def test_call_key_equals_orjson_on_any_object(fields, spaced):
    """Objects written out key by key (duplicate keys, nested ids, ids as values, escapes,
    spaces): wherever orjson reads a top-level string id, `call_key` gives its bytes."""
    colon, comma = (" : ", " , ") if spaced else (":", ",")
    raw = (
        b"{"
        + comma.encode().join(orjson.dumps(k) + colon.encode() + orjson.dumps(v) for k, v in fields)
        + b"}"
    )
    data = orjson.loads(raw)
    if type(data.get("id")) is str:
        assert call_key(raw) == data["id"].encode()
    else:  # no top-level string id: the message is invalid, any key will do
        with pytest.raises(InvalidEvent):
            parse_event(raw)


def test_cdr_transfer_round_trip(events, refdata):
    cdrs: list[CDR] = []
    replay_file(events, refdata, cdrs.extend, settings=SETTINGS)
    encoding, payload = encode_cdrs(cdrs)
    assert encoding == MARSHAL
    assert [strict(c) for c in decode_cdrs(encoding, payload)] == [strict(c) for c in cdrs]
    # unusual values are pickled rather than converted
    odd = [
        dataclasses.replace(cdrs[0], rate=Decimal("1.2300"), charged=Decimal("-0E-6")),
        dataclasses.replace(cdrs[1], start_time=cdrs[1].start_time.replace(tzinfo=None)),
    ]
    encoding, payload = encode_cdrs(odd[:1])
    assert encoding == MARSHAL
    assert [strict(c) for c in decode_cdrs(encoding, payload)] == [strict(odd[0])]
    encoding, payload = encode_cdrs(odd)
    assert encoding == PICKLE
    assert [strict(c) for c in decode_cdrs(encoding, payload)] == [strict(c) for c in odd]


class Boom(Exception):
    pass


def test_sink_failure_stops_the_workers(events, refdata):
    def sink(batch):
        raise Boom("store down")

    with pytest.raises(Boom):
        replay_file(events, refdata, sink, jobs=2, settings=SETTINGS, flush_every=100)
    assert not multiprocessing.active_children()


class FailingRows:
    """A `RowSink` whose `fail_at`-th insert of rows fails (0: the first; -1: the last)."""

    def __init__(self, fail_at: int, inserts: int = 0) -> None:
        self.fail_at, self.inserts, self.calls = fail_at, inserts, 0

    def write(self, batch):
        raise AssertionError("a RowSink gets rows")

    def write_rows(self, direction, rows):
        self.calls += 1
        if self.calls - 1 == self.fail_at or self.calls == self.inserts:
            raise Boom(f"insert {self.calls} failed")
        return len(rows)


@pytest.mark.parametrize("at", ["first", "last"])
def test_a_failed_insert_of_rows_stops_the_replay(events, refdata, at):
    """The inserts run on the store thread: a failure still ends the replay with that error,
    whether a later insert or the end of the run finds it."""
    counting = FailingRows(fail_at=-2)
    replay_file(events, refdata, counting, jobs=2, settings=SETTINGS, flush_every=500)
    assert counting.calls > 2
    sink = FailingRows(0) if at == "first" else FailingRows(-2, inserts=counting.calls)
    failing = 1 if at == "first" else counting.calls
    with pytest.raises(Boom, match=f"insert {failing} failed"):
        replay_file(events, refdata, sink, jobs=2, settings=SETTINGS, flush_every=500)
    assert sink.calls == failing  # nothing inserted after a failure
    assert not multiprocessing.active_children()


def test_worker_failure_is_reported(events, refdata, monkeypatch):
    import pipeline.replay.parallel as parallel

    class Broken(parallel.Engine):
        def feed_line(self, raw, topic, offset, *args, **kwargs):
            if offset == 1000:
                raise RuntimeError("engine bug")
            return super().feed_line(raw, topic, offset, *args, **kwargs)

    monkeypatch.setattr(parallel, "Engine", Broken)  # inherited by the forked workers
    with pytest.raises(RuntimeError, match="engine bug"):
        replay_file(events, refdata, lambda batch: None, jobs=2, settings=SETTINGS)
    assert not multiprocessing.active_children()


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.binary(max_size=64), max_size=60),
    st.integers(1, 64),
)
def test_partitions_for_is_kafkas_partitioner(keys, partitions):
    """The router's vectorized murmur2 equals `murmur2` (Kafka's) for any bytes and length."""
    assert partitions_for(keys, partitions) == [
        (murmur2(k) & 0x7FFFFFFF) % partitions for k in keys
    ]


def test_partitions_for_call_ids():
    ids = [f"gw-lon1-s7-{i:09d}" for i in range(500)] + ["", "x", "caf\u00e9"]
    keys = [i.encode() for i in ids]
    assert partitions_for(keys, 8) == [partition_for(i, 8) for i in ids]
