"""Call states and deadlines on disk (pipeline/state/rocks.py), and the correlator's hooks for
them: the same decisions as with a dict and heaps, bounded memory, O(expired) expiry."""

from __future__ import annotations

import dataclasses
import heapq
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from pipeline.core.correlate import CallState, Correlator, Deadlines, HeldEvent
from pipeline.core.engine import Engine
from pipeline.core.model import Event, Source
from pipeline.core.refdata import RefDataHolder
from pipeline.simulate import SimConfig, iter_messages
from pipeline.state import rocks
from pipeline.state.rocks import RocksDeadlines, RocksFinal, RocksStates, open_db, scratch_dir

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "config"
T0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
SETTINGS = Deadlines(
    max_call_duration=timedelta(minutes=15),
    orphan_wait=timedelta(minutes=2),
    memory=timedelta(minutes=10),
)


@pytest.fixture
def db(tmp_path):
    db = open_db(tmp_path / "db")
    yield db
    db.close()


def held(kind: str, call_id: str, at: float) -> HeldEvent:
    ts = T0 + timedelta(seconds=at)
    fields: dict = {}
    if kind == "start":
        fields = {"gateway": "g", "direction": "outbound", "account": "a", "source": "1"}
        fields |= {"destination": "44", "trunk": "T"}
    elif kind == "end":
        fields = {"disconnect_code": 200, "disconnect_reason": "Bye"}
        fields |= {"disconnect_initiator": "origination"}
    raw = orjson.dumps({"event": kind, "id": call_id, "ts": ts.isoformat(), **fields})
    return HeldEvent(Event(kind, call_id, ts, **fields), raw, Source("t", 0, 0))


def all_keys(db) -> list[bytes]:
    return list(db.keys())


def test_open_calls_stay_in_memory_settled_ones_go_to_disk(db):
    states = RocksStates(db)
    open_call = CallState("o", start=held("start", "o", 0))
    done = CallState("d", start=held("start", "d", 0), end=held("end", "d", 9), revision=1)
    states["o"] = open_call
    states["d"] = done
    assert all_keys(db) == [b"\x00d"]
    assert states.open_count() == 1 and len(states) == 2 and sorted(states) == ["d", "o"]
    assert states["o"] is open_call  # the object itself
    back = states["d"]
    assert back == done and back is not done  # decoded
    assert states.get("x") is None and "x" not in states and "d" in states
    with pytest.raises(KeyError):
        states["x"]
    # the call completes: it leaves memory for disk
    states["o"] = dataclasses.replace(open_call, end=held("end", "o", 5), revision=1)
    assert states.open_count() == 0 and sorted(all_keys(db)) == [b"\x00d", b"\x00o"]
    del states["o"]
    del states["d"]
    with pytest.raises(KeyError):
        del states["d"]
    assert len(states) == 0 and all_keys(db) == []


def test_an_orphan_whose_start_comes_is_open_again_and_off_disk(db):
    states = RocksStates(db)
    tomb = CallState("c", connect=held("connect", "c", 1), orphaned_at=T0)
    states["c"] = tomb
    assert states["c"] == tomb and states.open_count() == 0
    states["c"] = CallState("c", start=held("start", "c", 0))  # not settled any more
    assert all_keys(db) == [] and states.open_count() == 1 and len(states) == 1
    # without a read first, too (the mapping does not rely on the correlator's habits)
    states["c"] = tomb
    other = RocksStates(db)
    other["c"] = CallState("c", start=held("start", "c", 0))
    assert all_keys(db) == [] and list(other) == ["c"]


def entries(draw: random.Random, n: int) -> list[tuple[datetime, str]]:
    return [
        (T0 + timedelta(microseconds=draw.randrange(50)), draw.choice(["a", "b", "ab", "é", "z"]))
        for _ in range(n)
    ]


@pytest.mark.parametrize("seed", range(20))
def test_deadlines_leave_in_the_heaps_order(db, seed):
    """Random pushes and pops, few entries moved to memory at a time: entries leave by due,
    then call id (code point order), as from `heapq`; `due` is always the earliest due."""
    rnd = random.Random(seed)
    index = RocksDeadlines(db, 3, refill=rnd.choice([1, 2, 5, 100]))
    heap: list[tuple[datetime, str]] = []
    got, expected = [], []
    for step in range(400):
        if heap and rnd.random() < 0.45:
            expected.append(heapq.heappop(heap))
            due = index.due
            got.append((due, index.pop()))
        else:
            for entry in entries(rnd, rnd.randrange(1, 4)):
                if entry not in heap:  # entries pushed twice: see the test below
                    heapq.heappush(heap, entry)
                    index.push(*entry)
        assert index.due == (heap[0][0] if heap else None), step
    while heap:
        expected.append(heapq.heappop(heap))
        got.append((index.due, index.pop()))
    assert got == expected and len(expected) > 100
    assert index.due is None and len(index) == 0 and all_keys(db) == []


@pytest.mark.parametrize("refill", [1, 2, 100])
def test_an_entry_pushed_twice_leaves_at_least_once_and_in_its_place(db, refill):
    index = RocksDeadlines(db, 0, refill=refill)
    at = [T0 + timedelta(seconds=s) for s in range(4)]
    for due, call_id in [(at[1], "b"), (at[1], "b"), (at[0], "a"), (at[3], "d")]:
        index.push(due, call_id)
    assert index.pop() == "a"
    for due, call_id in [(at[2], "c"), (at[1], "b"), (at[3], "d")]:
        index.push(due, call_id)
    popped = []
    while index.due is not None:
        popped.append(index.pop())
    assert [x for i, x in enumerate(popped) if not i or popped[i - 1] != x] == ["b", "c", "d"]
    assert all_keys(db) == []


class NoScan(dict):
    """A dict of states that must not be read through."""

    def values(self):
        raise AssertionError("open_calls() read every state")

    def open_count(self) -> int:
        return sum(1 for s in dict.values(self) if not s.settled)


def test_open_calls_is_answered_by_the_store():
    correlator = Correlator(NoScan(), SETTINGS)
    correlator.process(held("start", "c", 0), 0)
    assert correlator.open_calls() == 1


class Recording:
    """A `DeadlineIndex` over a list, recording what the correlator asks of it."""

    def __init__(self, log: list, partition: int) -> None:
        self.log, self.partition = log, partition
        self.heap: list[tuple[datetime, str]] = []
        self.due: datetime | None = None

    def push(self, due: datetime, call_id: str) -> None:
        self.log.append(("push", self.partition, due, call_id))
        heapq.heappush(self.heap, (due, call_id))
        self.due = self.heap[0][0]

    def pop(self) -> str:
        call_id = heapq.heappop(self.heap)[1]
        self.log.append(("pop", self.partition, call_id))
        self.due = self.heap[0][0] if self.heap else None
        return call_id


def test_a_given_deadline_index_replaces_the_heaps():
    log: list = []
    correlator = Correlator({}, SETTINGS, deadlines=lambda p: Recording(log, p))
    for h in (held("start", "c", 0), held("connect", "c", 1), held("end", "c", 60)):
        correlator.process(h, 2)
    assert correlator._partitions[2].deadlines == []  # nothing in the built-in heap
    forget = T0 + timedelta(seconds=60) + SETTINGS.memory
    timeout = T0 + SETTINGS.max_call_duration
    assert log == [("push", 2, timeout, "c"), ("push", 2, forget, "c")]
    correlator.advance(2, forget)
    assert log[2:] == [("pop", 2, "c")] and correlator.states == {}
    correlator.advance(2, timeout)  # the stale entry of the call while it was open
    assert log[3:] == [("pop", 2, "c")]


def sim_lines(seed: int = 11, calls: int = 2000) -> list[bytes]:
    cfg = SimConfig(
        calls=calls,
        seed=seed,
        config_dir=str(CONFIG),
        start=datetime.now(UTC).replace(microsecond=0) - timedelta(hours=6),
        call_rate=2.0,  # ~17 minutes of calls: deadlines and forgetting happen in the file
        reorder=0.05,
        duplicate=0.05,
        late=0.05,
        orphan=0.04,
        never_ending=0.04,
        malformed=0.01,
    )
    return [m.value for m in iter_messages(cfg)]


def test_the_engine_decides_alike_on_disk_and_in_memory(db, tmp_path):
    """Every outcome of every line, the counters and the calls left are the in-memory
    engine's, on traffic with every kind of trouble and short deadlines: with states and
    deadlines on disk, and with only the deadlines on disk (the correlator's index path
    without the store's `settled_since`)."""
    refdata = RefDataHolder(CONFIG)
    memory = Engine(refdata, settings=SETTINGS)
    states = RocksStates(db)
    disk = Engine(refdata, states, SETTINGS, deadlines=states.deadlines)
    other = open_db(tmp_path / "deadlines")
    index_only = Engine(refdata, {}, SETTINGS, deadlines=lambda p: RocksDeadlines(other, p, 7))
    engines = (disk, index_only)
    for number, raw in enumerate(sim_lines(), 1):
        a = memory.feed_line(raw, "f", number)
        for engine in engines:
            b = engine.feed_line(raw, "f", number)
            assert b.cdrs == a.cdrs and b.dead == a.dead, number
    for partition in range(8):  # event time moves past every deadline
        end = T0.replace(year=2100)
        a = memory.advance(partition, end)
        for engine in engines:
            b = engine.advance(partition, end)
            assert b.cdrs == a.cdrs and b.dead == a.dead
    for engine in engines:
        assert engine.counters == memory.counters
    kinds = memory.counters
    assert kinds["dlq_orphan"] and kinds["dlq_late"] and kinds["timeouts"] and kinds["duplicates"]
    assert memory.correlator.states == {} == index_only.correlator.states and len(states) == 0
    assert all_keys(db) == [] and all_keys(other) == []
    other.close()


def test_a_million_calls_are_forgotten_in_o_expired_and_leave_the_store_empty(db, monkeypatch):
    """Expiry reads the index from its start, never the whole of it: with a million
    remembered calls, forgetting the first thousand reads a thousand entries (and at most
    one move ahead); forgetting all of them leaves no key behind, and decodes no state
    (`settled_since`)."""
    n = 1_000_000
    states = RocksStates(db)
    index = states.deadlines(0)
    correlator = Correlator(states, SETTINGS, deadlines=lambda p: index)
    template = CallState("x", connect=held("connect", "x", 0), orphaned_at=T0)
    replace = dataclasses.replace
    for i in range(n):
        call_id = f"call-{i}"
        orphaned = T0 + timedelta(milliseconds=i)  # forgotten at orphaned + memory
        states[call_id] = replace(template, id=call_id, orphaned_at=orphaned)
        index.push(orphaned + SETTINGS.memory, call_id)
    assert index.read == 0 and states.open_count() == 0

    def no_decode(data):
        raise AssertionError("a state was decoded to be forgotten")

    monkeypatch.setattr(rocks, "decode_state", no_decode)
    first = T0 + SETTINGS.memory + timedelta(milliseconds=999)
    assert correlator.advance(0, first) == []
    assert "call-999" not in states and states.settled_since("call-1000") is not None
    assert 1000 <= index.read <= 1000 + 2 * 1024
    correlator.advance(0, first + timedelta(days=1))
    assert index.read == n and index.due is None
    assert all_keys(db) == []


def test_final_flags_on_disk(db):
    final = RocksFinal(db)
    final.update([("a", (True, False, False)), ("b", (False, True, True))])
    final.update([("a", (False, False, True))])
    assert sorted(final.values()) == [(False, False, True), (False, True, True)]
    assert len(final) == 2


def test_scratch_dir_is_removed(tmp_path):
    with scratch_dir(tmp_path / "states") as path:
        db = open_db(path / "db")
        db[b"k"] = b"v"
        db.close()
        assert path.parent == tmp_path / "states" and any(path.iterdir())
    assert not path.exists() and (tmp_path / "states").exists()
