"""The Faust engine's call table on local disk (pipeline/state/table.py): the decisions of
the in-memory engine across restarts, with deadlines, clocks and outputs in doubt coming
from what the store wrote beside each state, never from reading every state."""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass
from datetime import timedelta

import faust
import orjson
import pytest
from faust.streams import _current_event
from faust.types import TP

from pipeline.core.engine import Engine
from pipeline.core.model import Source
from pipeline.core.refdata import RefDataHolder
from pipeline.state.changelog import state_from_changelog, state_to_json
from pipeline.state.codec import encode_state
from pipeline.state.table import CLOCK, CallTable
from pipeline.stream.faust_engine import DiskTableStates

from .test_rocks_states import CONFIG, SETTINGS, T0, sim_lines

TOPIC = "f"
CHANGELOG = TP("calls-changelog", 0)


@dataclass
class Message:
    topic: str
    partition: int
    offset: int
    key: bytes | None = None
    value: bytes | None = None

    @property
    def tp(self) -> TP:
        return TP(self.topic, self.partition)


class Event:
    """What Faust's store reads of the event being processed."""

    def __init__(self, message: Message) -> None:
        self.message = message


def open_table(root) -> CallTable:
    app = faust.App(
        "t", store="disk://", datadir=str(root), key_serializer="raw", value_serializer="raw"
    )
    table = app.Table("calls", key_type=bytes, value_type=bytes, partitions=1)
    store = table.data
    assert isinstance(store, CallTable)
    store.settings = SETTINGS
    return store


def close(store: CallTable) -> None:
    for db in store._dbs.values():  # noqa: SLF001  (what a process's exit does)
        db.close()
    store._dbs.clear()  # noqa: SLF001


def keys(store: CallTable) -> list[bytes]:
    """The partition's call ids (Faust's own iteration covers assigned partitions only)."""
    return sorted(store._visible_keys(store._db_for_partition(0)))  # noqa: SLF001


def items(store: CallTable) -> dict[bytes, bytes]:
    return dict(store._visible_items(store._db_for_partition(0)))  # noqa: SLF001


def engine_over(store: CallTable, refdata: RefDataHolder) -> tuple[Engine, DiskTableStates]:
    """The Faust worker's view after an assignment (`WorkerRuntime.reassign`)."""
    states = DiskTableStates(store, store)
    engine = Engine(refdata, states, SETTINGS, partitions=1, deadlines=states.deadlines)
    engine.correlator.set_clock(0, store.clock(0))
    return engine, states


def feed(engine: Engine, raw: bytes, offset: int):
    event = Event(Message(TOPIC, 0, offset))
    token = _current_event.set(weakref.ref(event))
    try:
        return engine.feed(raw, Source(TOPIC, 0, offset), 0)
    finally:
        _current_event.reset(token)


def test_restarts_decide_as_one_process_in_memory(tmp_path):
    """Every outcome equals the in-memory engine's on traffic with every kind of trouble and
    short deadlines, while the worker "restarts" every 700 lines with nothing but its
    store: deadlines and clock come back from disk, nothing is read through; at the end the
    store holds what the in-memory engine still remembers."""
    refdata = RefDataHolder(CONFIG)
    memory = Engine(refdata, settings=SETTINGS, partitions=1)
    store = open_table(tmp_path)
    disk, states = engine_over(store, refdata)
    for n, raw in enumerate(sim_lines(), 1):
        a = memory.feed(raw, Source(TOPIC, 0, n), 0)
        b = feed(disk, raw, n)
        assert b.cdrs == a.cdrs and b.dead == a.dead, n
        if n % 700 == 0:
            close(store)
            store = open_table(tmp_path)
            disk, states = engine_over(store, refdata)
            assert disk.correlator.clock(0) == memory.correlator.clock(0)
    assert [k.decode() for k in keys(store)] == sorted(memory.correlator.states)
    close(store)


def test_outputs_in_doubt_are_the_states_triggered_at_or_after_the_commit(tmp_path):
    """After a restart, the states whose output came from a message at or after the
    committed offset are in doubt: exactly those, each once (a state written several times
    counts once, by its newest trigger), and triggers below a commit are pruned."""
    refdata = RefDataHolder(CONFIG)
    store = open_table(tmp_path)
    engine, _ = engine_over(store, refdata)
    lines = sim_lines()[:1500]
    for n, raw in enumerate(lines, 1):
        feed(engine, raw, n)
    close(store)
    store = open_table(tmp_path)
    committed = {(TOPIC, 0): 1200}
    doubtful = store.in_doubt(0, committed)
    states = {k.decode(): v for k, v in items(store).items()}
    expected = {
        call_id
        for call_id, raw in states.items()
        if (t := state_from_changelog(raw).trigger) is not None and t.offset >= 1200
    }
    assert expected and sorted(s.id for s in doubtful) == sorted(expected)
    store.prune(0, {(TOPIC, 0): 1501})
    assert store.in_doubt(0, committed) == []
    close(store)


def test_a_recovery_indexes_what_it_applies(tmp_path):
    """Faust's recovery writes changelog records through `apply_changelog_batch`: the
    states are stored with their deadlines, clock and triggers as the agent's writes are,
    tombstones remove them, and the offset is kept for the next restart."""
    refdata = RefDataHolder(CONFIG)
    source = open_table(tmp_path / "a")
    engine, _ = engine_over(source, refdata)
    for n, raw in enumerate(sim_lines()[:900], 1):
        feed(engine, raw, n)
    records = list(items(source).items())
    clock = source.clock(0)
    close(source)
    store = open_table(tmp_path / "b")
    events = [Event(Message(CHANGELOG.topic, 0, i, k, v)) for i, (k, v) in enumerate(records)]
    gone = records[0][0]
    events.append(Event(Message(CHANGELOG.topic, 0, len(records), gone, None)))
    store.apply_changelog_batch(events, None, None)
    assert store.clock(0) == clock
    assert keys(store) == sorted(k for k, _ in records if k != gone)
    assert store.persisted_offset(CHANGELOG) == len(records)
    # Every remembered call leaves when event time passes the memory window.
    engine, _ = engine_over(store, refdata)
    late = max(clock.values()) + SETTINGS.memory + SETTINGS.max_call_duration + timedelta(hours=1)
    event = Event(Message(TOPIC, 0, 10_000))
    token = _current_event.set(weakref.ref(event))
    try:
        engine.correlator.advance(0, late)
    finally:
        _current_event.reset(token)
    assert keys(store) == []
    close(store)


def test_earlier_json_records_are_converted(tmp_path):
    refdata = RefDataHolder(CONFIG)
    source = open_table(tmp_path / "a")
    engine, states = engine_over(source, refdata)
    for n, raw in enumerate(sim_lines()[:50], 1):
        feed(engine, raw, n)
    decoded = {k.decode(): states[k.decode()] for k in keys(source)}
    close(source)
    store = open_table(tmp_path / "b")
    events = [
        Event(Message("c", 0, i, k.encode(), state_to_json(s)))
        for i, (k, s) in enumerate(decoded.items())
    ]
    store.apply_changelog_batch(events, None, None)
    assert {k.decode(): v for k, v in items(store).items()} == {
        k: encode_state(s) for k, s in decoded.items()
    }
    close(store)


def filled(root) -> CallTable:
    """A store with 100 events' states, as of changelog offset 99."""
    store = open_table(root)
    engine, _ = engine_over(store, RefDataHolder(CONFIG))
    for n, raw in enumerate(sim_lines()[:100], 1):
        feed(engine, raw, n)
    store.set_persisted_offset(CHANGELOG, 99)
    return store


@pytest.mark.parametrize("damage", ["garbage", "layout", "old"])
def test_an_unusable_store_is_wiped_and_rebuilt(tmp_path, damage):
    store = filled(tmp_path)
    db = store._db_for_partition(0)  # noqa: SLF001
    record = orjson.loads(db[CLOCK])
    path = store.partition_path(0)
    if damage == "layout":
        db[CLOCK] = orjson.dumps({**record, "layout": 0})
    elif damage == "old":
        db[CLOCK] = orjson.dumps({**record, "written": time.time() - 21 * 3600})
    close(store)
    if damage == "garbage":
        for sst in path.glob("*.sst"):
            sst.write_bytes(b"\0" * sst.stat().st_size)
        for log in path.glob("*.log"):
            log.write_bytes(b"\xff" * 64)
    store = open_table(tmp_path)
    assert store.persisted_offset(CHANGELOG) is None
    assert 0 in store.problems and keys(store) == []
    close(store)


def test_a_usable_store_is_kept(tmp_path):
    store = filled(tmp_path)
    kept = keys(store)
    close(store)
    store = open_table(tmp_path)
    assert store.problems == {} and keys(store) == kept
    assert store.persisted_offset(CHANGELOG) == 99
    assert store.clock(0)["start"] >= T0
    close(store)
