"""A streaming worker's call states in local stores (pipeline/state/checkpointed.py): the
same decisions as in memory across restarts from a checkpoint, atomic checkpoints, stores
that are not trusted blindly, and a bulk rebuild that gives the same store."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from pipeline.core.correlate import CallState, Correlator
from pipeline.core.engine import Engine
from pipeline.core.model import Source
from pipeline.core.refdata import RefDataHolder
from pipeline.state import checkpointed
from pipeline.state.changelog import state_to_json
from pipeline.state.checkpointed import (
    CHECKPOINT,
    OPEN,
    STATE,
    Checkpoint,
    DiskStates,
    PartitionStore,
    Rebuild,
    StoreCorrupt,
    clock_us,
)
from pipeline.state.codec import decode_state, encode_state
from pipeline.state.rocks import RocksDeadlines

from .test_rocks_states import CONFIG, SETTINGS, T0, held, sim_lines

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def opened(root, partitions: int = 1) -> DiskStates:
    states = DiskStates(root, partitions)
    for p in range(partitions):
        states.open_store(p)
        states.attach(p)
    return states


def engine_over(states: DiskStates, refdata: RefDataHolder) -> Engine:
    """An engine over the states, each partition's clock resumed from its checkpoint (as
    `WorkerRuntime.reassign` does)."""
    engine = Engine(refdata, states, SETTINGS, partitions=1, deadlines=states.deadlines)
    cp = states.stores[0].checkpoint
    engine.correlator.set_clock(0, cp.clock_times() if cp else {})
    return engine


def checkpoint(states: DiskStates, engine: Engine, offset: int) -> None:
    clock = clock_us(engine.correlator.clock(0))
    states.flush({0: Checkpoint(1, offset, {"f": offset}, clock)})


def test_restarts_from_checkpoints_decide_as_one_process_in_memory(tmp_path):
    """Every outcome equals the in-memory engine's, on traffic with every kind of trouble and
    short deadlines, while the process "restarts" every 700 lines: the stores are closed
    after a checkpoint and opened again, open calls, deadlines and clocks coming back from
    disk; at the end nothing is left but what the memory window still holds."""
    refdata = RefDataHolder(CONFIG)
    memory = Engine(refdata, settings=SETTINGS, partitions=1)
    states = opened(tmp_path)
    disk = engine_over(states, refdata)
    lines = sim_lines()
    for n, raw in enumerate(lines, 1):
        a = memory.feed(raw, Source("f", 0, n), 0)
        b = disk.feed(raw, Source("f", 0, n), 0)
        assert b.cdrs == a.cdrs and b.dead == a.dead, n
        if n % 700 == 0:
            checkpoint(states, disk, n)
            states.close()
            states = opened(tmp_path)
            assert states.stores[0].checkpoint.changelog == n
            assert states.open_count() == sum(
                1 for s in memory.correlator.states.values() if not s.settled
            )
            disk = engine_over(states, refdata)
    end = T0.replace(year=2100)
    a, b = memory.advance(0, end), disk.advance(0, end)
    assert b.cdrs == a.cdrs and b.dead == a.dead
    kinds = memory.counters
    assert kinds["dlq_orphan"] and kinds["dlq_late"] and kinds["timeouts"] and kinds["duplicates"]
    checkpoint(states, disk, len(lines))
    db = states.stores[0].db
    assert [k for k in keys(db) if k != CHECKPOINT] == []
    states.close()


def test_a_crash_before_the_checkpoint_loses_the_whole_cycle_and_nothing_else(tmp_path):
    """Writes of a cycle reach the store only with its checkpoint: a process that dies
    before `flush` leaves the store of the previous checkpoint, states and clock alike."""
    states = opened(tmp_path)
    correlator = Correlator(states, SETTINGS, deadlines=states.deadlines)
    correlator.process(held("start", "a", 0), 0)
    correlator.process(held("end", "a", 30), 0)
    states.flush({0: Checkpoint(1, 5, {}, clock_us(correlator.clock(0)))})
    correlator.process(held("start", "b", 40), 0)  # the next cycle: never flushed
    del states["a"]
    assert "b" in states and "a" not in states
    states.close()  # the crash: what `dirty` held is gone with the process
    states = opened(tmp_path)
    assert states.stores[0].checkpoint.changelog == 5
    assert "b" not in states and states["a"].complete
    assert states.stores[0].checkpoint.clock_times() == {
        "start": T0,
        "end": T0 + timedelta(seconds=30),
    }
    states.close()


def test_popped_deadlines_are_deleted_with_the_checkpoint_only(tmp_path):
    """A deadline entry taken from the index stays on disk until the states it led to are
    written: after a crash in between, the call still has the entry that closes it."""
    states = opened(tmp_path)
    correlator = Correlator(states, SETTINGS, deadlines=states.deadlines)
    correlator.process(held("start", "a", 0), 0)
    states.flush({0: Checkpoint(1, 1, {}, clock_us(correlator.clock(0)))})
    later = T0 + SETTINGS.max_call_duration + timedelta(seconds=1)
    closed = correlator.advance(0, later)  # the timeout pops the entry and closes the call
    assert [type(a).__name__ for a in closed] == ["Emit"]
    states.close()  # crash before the checkpoint
    states = opened(tmp_path)
    correlator = Correlator(states, SETTINGS, deadlines=states.deadlines)
    correlator.set_clock(0, states.stores[0].checkpoint.clock_times())
    again = correlator.advance(0, later)
    assert [type(a).__name__ for a in again] == ["Emit"]
    assert again[0].state.timed_out_at == T0 + SETTINGS.max_call_duration
    states.close()


def test_a_store_without_checkpoint_or_with_a_garbled_one_is_rebuilt(tmp_path):
    states = opened(tmp_path)
    states.flush({0: Checkpoint(1, 7)})
    db = states.stores[0].db
    db.put(STATE + b"x", encode_state(CallState("x", start=held("start", "x", 0))))
    db.put(CHECKPOINT, b"{not json")
    states.close()
    store = reopen(tmp_path)
    assert store.checkpoint is None and "unreadable checkpoint" in (store.problem or "")
    assert keys(store.db) == []  # wiped: rebuilt from the changelog's beginning
    store.db.put(STATE + b"y", b"\x02")  # a first build that never finished
    store.close()
    store = reopen(tmp_path)
    assert "no checkpoint" in (store.problem or "") and keys(store.db) == []
    store.close()


def keys(db) -> list[bytes]:
    """Every key of a store."""
    return list(db.keys())


def reopen(root, partitions: int = 1) -> PartitionStore:
    states = DiskStates(root, partitions)
    return PartitionStore(root, 0, partitions, states.cache, states.manager)


def test_a_corrupt_or_truncated_store_file_is_detected_and_the_store_rebuilt(tmp_path):
    states = opened(tmp_path)
    for i in range(2000):
        states[f"c{i}"] = CallState(f"c{i}", start=held("start", f"c{i}", i))
    states.flush({0: Checkpoint(1, 2000)})
    states.stores[0].db.flush()
    states.close()
    tables = sorted((tmp_path / "partition-0").glob("*.sst"))
    assert tables
    with open(tables[0], "r+b") as f:  # a disk that lost the file's end
        f.truncate(tables[0].stat().st_size // 2)
    store = reopen(tmp_path)
    assert store.checkpoint is None and "cannot be opened" in (store.problem or "")
    assert keys(store.db) == []
    store.close()


def test_a_read_that_fails_condemns_the_store(tmp_path):
    states = opened(tmp_path)
    states.flush({0: Checkpoint(1, 3)})
    states.stores[0].db.close()  # every read now fails, as one of a corrupt block would
    with pytest.raises(StoreCorrupt):
        states.get("anything")
    store = reopen(tmp_path)
    assert "condemned" in (store.problem or "") and store.checkpoint is None
    store.close()


@pytest.mark.parametrize(
    ("written_ago", "changelog", "end", "expect"),
    [
        (0, 10, 10, None),
        (0, 12, 10, "ahead of the changelog"),
        (0, 10, 30, None),
        (30 * 3600, 10, 10, "older than"),
    ],
)
def test_a_store_is_checked_against_the_changelog(tmp_path, written_ago, changelog, end, expect):
    """Ahead of the changelog (the topic was recreated) or older than tombstones are kept:
    rebuilt. Behind it: caught up from the checkpoint."""
    store = reopen(tmp_path)
    store.write_checkpoint(Checkpoint(1, changelog))
    cp = store.checkpoint
    cp.written = time.time() - written_ago
    store.db.put(CHECKPOINT, cp.to_bytes())
    store.close()
    store = reopen(tmp_path)
    reason = store.check(0, end, 20 * 3600)
    if expect is None:
        assert reason is None and store.checkpoint.changelog == changelog
    else:
        assert expect in reason and store.checkpoint is None
    store.close()


def test_a_store_of_another_partition_count_is_rebuilt(tmp_path):
    store = reopen(tmp_path, partitions=8)
    store.write_checkpoint(Checkpoint(8, 3))
    store.close()
    store = reopen(tmp_path, partitions=16)
    assert "8 partitions" in (store.problem or "") and store.checkpoint is None
    store.close()


def test_a_bulk_rebuild_gives_the_store_the_cycles_wrote(tmp_path):
    """Rebuilding from the changelog's records (the newest per call, tombstones, states in
    the earlier JSON format too) gives the same states, open-call marks, deadline entries
    and clock as the cycles that wrote them; a restart from it decides the same."""
    refdata = RefDataHolder(CONFIG)
    states = opened(tmp_path / "cycles")
    engine = engine_over(states, refdata)
    records: list[tuple[bytes, bytes | None]] = []

    def cycle_end(n: int) -> None:
        for call_id, _, state in states.changes():
            value = None if state is None else encode_state(state)
            if value is not None and n % 300 == 0:
                value = state_to_json(state)  # the changelog's earlier format
            records.append((call_id.encode(), value))
        checkpoint(states, engine, len(records))

    lines = sim_lines(calls=600)
    for n, raw in enumerate(lines, 1):
        engine.feed(raw, Source("f", 0, n), 0)
        if n % 100 == 0:
            cycle_end(n)
    cycle_end(len(lines))
    rebuilt = DiskStates(tmp_path / "rebuilt", 1)
    store = rebuilt.open_store(0)
    rebuild = Rebuild(store, SETTINGS)
    rebuild.apply(records)
    rebuild.finish(len(records), {"f": 0})
    rebuilt.attach(0)
    a, b = states.stores[0].db, store.db

    def space(db, prefix: bytes) -> dict[bytes, bytes]:
        return {k: v for k, v in db.items() if k[:1] == prefix}

    assert space(b, STATE) == space(a, STATE) and space(b, OPEN) == space(a, OPEN)
    index = RocksDeadlines(b, 0, keep=True)
    entries = set(space(b, b"\x01"))
    for value in space(a, STATE).values():  # each call's current deadline is indexed
        state = decode_state(value)
        due = state.deadline(SETTINGS)[0]
        assert index._key((due - EPOCH) // timedelta(microseconds=1), state.id) in entries
    assert store.checkpoint.clock == states.stores[0].checkpoint.clock
    assert rebuilt.open_count() == states.open_count() > 0
    end = T0.replace(year=2100)
    first = engine.advance(0, end)
    second = engine_over(rebuilt, refdata).advance(0, end)
    assert second.cdrs == first.cdrs and second.dead == first.dead
    states.close()
    rebuilt.close()


def test_the_layout_is_versioned():
    assert checkpointed.LAYOUT >= 1
    with pytest.raises(ValueError):
        Checkpoint.from_bytes(b'{"partitions": 1}')


KILLED = """
import os, sys
from pathlib import Path
from pipeline.core.correlate import CallState
from pipeline.state.checkpointed import Checkpoint, DiskStates
states = DiskStates(Path(sys.argv[1]), 1)
states.open_store(0)
states.attach(0)
states["a"] = CallState("a")
states.flush({0: Checkpoint(1, 11)})
os.kill(os.getpid(), 9)
"""


def test_a_killed_process_loses_no_flushed_cycle(tmp_path):
    """The stores' batches go through the write-ahead log: a process killed with SIGKILL
    right after a cycle's flush (nothing flushed to table files yet) loses nothing of it."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", KILLED, str(tmp_path)], check=False)
    assert done.returncode == -9
    store = reopen(tmp_path)
    assert store.problem is None and store.checkpoint.changelog == 11
    assert store.db.get(STATE + b"a") is not None
    store.close()


def test_a_million_remembered_calls_expire_in_o_expired_and_leave_the_store_empty(tmp_path):
    """A million settled calls rebuilt into a store (the bulk path) are forgotten when event
    time passes their memory window: until then expiry reads one refill of the index, never
    the store; forgetting them all reads each entry once and, with the checkpoint, leaves
    nothing behind."""
    n = 1_000_000
    template = encode_state(
        CallState("c-0000000", start=held("start", "c-0000000", 0), orphaned_at=T0)
    )
    records = []
    for i in range(n):
        key = f"c-{i:07d}".encode()
        records.append((key, template.replace(b"c-0000000", key)))
    states = DiskStates(tmp_path, 1)
    rebuild = Rebuild(states.open_store(0), SETTINGS)
    rebuild.apply(records)
    rebuild.finish(n, {})
    del records
    states.attach(0)
    correlator = Correlator(states, SETTINGS, deadlines=states.deadlines)
    correlator.set_clock(0, states.stores[0].checkpoint.clock_times())
    index = states.indexes[0]
    forget = T0 + SETTINGS.memory  # every call was orphaned at T0: all due at once
    correlator.advance(0, forget - timedelta(microseconds=1))
    assert index.read <= 1024 and not states.dirty  # only the first refill was read
    correlator.advance(0, forget)
    assert index.read == n and len(states.dirty) == n
    states.flush({0: Checkpoint(1, n)})
    assert keys(states.stores[0].db) == [CHECKPOINT]
    states.close()


@pytest.mark.parametrize("seed", range(6))
def test_a_kept_index_leaves_in_heap_order_whenever_its_writes_land(tmp_path, seed):
    """Pushes and pops of an index that writes with its owner's checkpoints (`keep`) give
    the order of an in-memory heap, however pushes, pops, refills and writes interleave."""
    import heapq
    import random

    from rocksdict import WriteBatch

    draw = random.Random(seed)
    store = reopen(tmp_path)
    index = RocksDeadlines(store.db, 0, refill=draw.choice([3, 7, 50]), keep=True)
    heap: list[tuple[datetime, str]] = []
    got, want = [], []
    for step in range(3000):
        action = draw.random()
        if action < 0.5:
            entry = (T0 + timedelta(seconds=draw.randrange(5000)), f"c{draw.randrange(400)}")
            if entry not in heap:
                heapq.heappush(heap, entry)
                index.push(*entry)
        elif action < 0.9 and heap:
            want.append(heapq.heappop(heap)[1])
            got.append(index.pop())
            assert index.due == (heap[0][0] if heap else None), step
        else:  # the owner's write
            batch = WriteBatch(raw_mode=True)
            for key in index.pushed:
                batch.put(key, b"")
            for key in index.popped:
                batch.delete(key)
            store.db.write(batch)
            index.written()
    assert got == want
    store.close()
