"""The Faust engine's call table on local disk: Faust's RocksDB table store, with what the
worker needs of its states written beside each one.

Faust keeps each table partition in a RocksDB of its own with the changelog offset it
reflects, so a worker restarted on the same host reads only the changelog's tail. What Faust
does not keep is what the correlator needs on an assignment without reading every state:
the deadline index, the partition's event-time clock and the states whose outputs a crash
may have lost. Here every write of a state (by the agent, or by Faust's recovery applying
changelog records) carries those in the same atomic batch, derived from the state's bytes
(`checkpointed.indexed`), so they cannot disagree with the states after a crash.

Key spaces of a partition's database (a byte, then):

    0x00 call id                          the state (the changelog record's bytes)
    0x01 partition, due, call id          the deadline index (`RocksDeadlines`)
    0x06 "clock"                          newest event time per kind, layout, last write
    0x07 topic, 0x00, offset, call id     the message whose handling produced the state's
                                          output (its trigger); pruned below the commits
    __faust\\0offset__                    Faust's changelog offset

A store that cannot be opened, was written by another layout, or was last written longer
ago than the changelog keeps tombstones (`MAX_STORE_AGE_S`) is wiped: Faust then rebuilds
it from the changelog's beginning.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from confluent_kafka import TopicPartition as RdTopicPartition
from faust.stores import STORES
from faust.stores import rocksdb as faust_rocksdb
from faust.streams import current_event
from rocksdict import Cache, Rdict, WriteBatch, WriteBufferManager

from pipeline.core.correlate import CallState, Deadlines
from pipeline.kafka.topics import TP
from pipeline.state import codec
from pipeline.state.checkpointed import (
    KINDS,
    MAX_STORE_AGE_S,
    WRITE_BUFFER,
    WRITE_BUFFERS_TOTAL,
    as_encoded,
    indexed,
)
from pipeline.state.codec import decode_state
from pipeline.state.restore import changelog_consumer, read_changelog, trim_heap
from pipeline.state.rocks import (
    BLOCK_CACHE,
    RocksDeadlines,
    bounded,
    deadline_key,
    deadline_prefix,
    open_db,
)

log = logging.getLogger(__name__)

__all__ = ["SCHEME", "CallTable"]

SCHEME = "disk"  # CDRPIPE_TABLE_STORE=disk://
STATE, CLOCK, TRIGGER = b"\x00", b"\x06clock", b"\x07"
_STATE_END, _TRIGGER_END = b"\x01", b"\x08"
LAYOUT = 1  # of the key spaces above; a store of another layout is rebuilt
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def trigger_key(topic: str, offset: int, call_id: bytes = b"") -> bytes:
    return TRIGGER + topic.encode() + b"\x00" + offset.to_bytes(8, "big") + call_id


class CallTable(faust_rocksdb.Store):
    """Faust's RocksDB store (rocksdict) for the `calls` table. `settings` (the deadlines,
    for the index) is set by the app once the table exists."""

    def __init__(self, url: Any, app: Any, table: Any, **kwargs: Any) -> None:
        super().__init__(url, app, table, driver="rocksdict", **kwargs)
        self.settings = Deadlines()
        self._cache = Cache(BLOCK_CACHE)
        self._manager = WriteBufferManager(WRITE_BUFFERS_TOTAL, False)
        self._clocks: dict[int, list[int]] = {}  # partition -> newest µs per kind, -1: none
        self._indexes: dict[int, RocksDeadlines] = {}
        self.problems: dict[int, str] = {}  # partition -> why its store was rebuilt
        self.applied = 0  # changelog records applied by recoveries
        # Set by the app: stores of newly assigned partitions are caught up with librdkafka
        # before Faust's own recovery starts (which then finds nothing left to read).
        self.bootstrap: str | None = None

    # -- opening -----------------------------------------------------------------------------

    def _open_for_partition(self, partition: int) -> Rdict:
        path = self.partition_path(partition)
        existed = path.exists()
        problem = None
        try:
            db = self._open(path)
        except Exception as exc:  # rocksdict raises plain exceptions for corruption
            problem = f"cannot be opened ({exc})"
        else:
            problem = self._unusable(db) if existed else None
            if problem is not None:
                db.close()
        if problem is not None:
            db = self._wipe(partition, problem)
        raw = db.get(CLOCK)
        clock = orjson.loads(raw)["clock"] if raw is not None else [-1, -1, -1]
        self._clocks[partition] = clock
        return db

    def _wipe(self, partition: int, problem: str) -> Rdict:
        log.warning("table store of partition %d %s: rebuilding it", partition, problem)
        self.problems[partition] = problem
        path = self.partition_path(partition)
        shutil.rmtree(path, ignore_errors=True)
        return self._open(path)

    def _open(self, path: Any) -> Rdict:
        return open_db(
            path, cache=self._cache, write_buffer=WRITE_BUFFER, manager=self._manager, wal=True
        )

    def _unusable(self, db: Rdict) -> str | None:
        raw = db.get(CLOCK)
        if raw is None:
            if db.get(self.offset_key) is None:
                return None  # nothing written yet
            return "has no clock record (another layout)"
        try:
            record = orjson.loads(raw)
            layout, version, written = record["layout"], record["codec"], record["written"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            return f"has an unreadable clock record ({exc})"
        if (layout, version) != (LAYOUT, codec.VERSION):
            return f"has layout {layout}/{version}, not {LAYOUT}/{codec.VERSION}"
        if time.time() - written > MAX_STORE_AGE_S:
            return f"is older than the changelog keeps tombstones ({MAX_STORE_AGE_S} s)"
        return None

    # -- writes: each state with its index entries, in one batch -----------------------------

    def _add(self, batch: WriteBatch, partition: int, key: bytes, value: bytes) -> None:
        value = as_encoded(value)
        batch.put(STATE + key, value)
        settings = self.settings
        due, _, *held = indexed(value, settings, settings.memory // _US)
        batch.put(deadline_key(deadline_prefix(partition), due, key), b"")
        clock = self._clocks[partition]
        for i, ts in enumerate(held):
            if ts is not None and ts > clock[i]:
                clock[i] = ts
        trigger = codec.trigger(value)
        if trigger is not None:
            batch.put(trigger_key(trigger[0], trigger[1], key), b"")

    def _batch(self, partition: int) -> WriteBatch:
        """A new batch for the partition, beginning with the deletes of the deadline entries
        popped since its last write (first: a state written again with the deadline just
        popped keeps its entry). Pushed entries need no write: each is a state's deadline,
        written with it."""
        batch = WriteBatch(raw_mode=True)
        index = self._indexes.get(partition)
        if index is not None:
            for key in index.popped:
                batch.delete(key)
            index.written()
        return batch

    def _finish(self, batch: WriteBatch, partition: int) -> None:
        """Add the clock record and write the batch."""
        record = {
            "clock": self._clocks[partition],
            "layout": LAYOUT,
            "codec": codec.VERSION,
            "written": time.time(),
        }
        batch.put(CLOCK, orjson.dumps(record))
        self._db_for_partition(partition).write(batch)

    def _set(self, key: bytes, value: bytes | None) -> None:
        event = current_event()
        if event is None:  # a delete outside the agent (`_del`)
            for db in self._dbs_for_key(key):
                db.delete(STATE + key)
            return
        partition = event.message.partition
        batch = self._batch(partition)
        if value is None:
            batch.delete(STATE + key)
        else:
            self._key_index[key] = partition
            self._add(batch, partition, key, value)
        self._finish(batch, partition)

    def _del(self, key: bytes) -> None:
        self._set(key, None)

    def apply_changelog_batch(
        self,
        batch: Iterable[Any],
        to_key: Callable[[Any], Any],
        to_value: Callable[[Any], Any],
    ) -> None:
        """Faust's recovery: changelog records into the stores, indexed as the agent's
        writes are, then the offsets they reflect."""
        batches: dict[int, WriteBatch] = {}
        offsets: dict[Any, int] = {}
        n = 0
        for event in batch:
            msg = event.message
            offsets[msg.tp] = max(msg.offset, offsets.get(msg.tp, -1))
            b = batches.get(msg.partition)
            if b is None:
                b = batches[msg.partition] = WriteBatch(raw_mode=True)
                self._db_for_partition(msg.partition)  # opened: its clock is known
            if msg.value is None:
                b.delete(STATE + msg.key)
            else:
                self._add(b, msg.partition, msg.key, msg.value)
            n += 1
        for partition, b in batches.items():
            self._finish(b, partition)
        for tp, offset in offsets.items():
            self.set_persisted_offset(tp, offset)
        self.applied += n

    # -- catching up before Faust's recovery -------------------------------------------------

    async def assign_partitions(self, table: Any, tps: set[Any], generation_id: int = 0) -> None:
        await super().assign_partitions(table, tps, generation_id)
        if self.bootstrap is None:
            return
        standbys = self.app.assignor.assigned_standbys()
        mine = [tp for tp in tps if tp.topic in table.changelog_topic.topics and tp not in standbys]
        if mine:
            await asyncio.to_thread(self.catch_up, sorted(mine))

    def catch_up(self, tps: list[Any]) -> None:
        """Bring the stores of `tps` (changelog partitions) up to the changelog's end with
        librdkafka, in bulk: Faust's recovery reads a record at a time through its event
        loop, some thousands a second. Blocking (a thread)."""
        assert self.bootstrap is not None
        consumer = changelog_consumer(self.bootstrap)
        try:
            for tp in tps:
                p = tp.partition
                begin, end = consumer.get_watermark_offsets(RdTopicPartition(tp.topic, p), 10)
                persisted = self.persisted_offset(tp)
                if persisted is not None and persisted >= end:
                    self._dbs[p].close()
                    self._dbs[p] = self._wipe(
                        p, f"is ahead of the changelog ({persisted} >= {end}: a recreated topic?)"
                    )
                    self._clocks[p] = [-1, -1, -1]
                    persisted = None
                first = begin if persisted is None else max(begin, persisted + 1)
                started, n = time.monotonic(), 0
                for records in read_changelog(consumer, p, first, end):
                    batch = WriteBatch(raw_mode=True)
                    for _, key, value in records:
                        if value is None:
                            batch.delete(STATE + key)
                        else:
                            self._add(batch, p, key, value)
                    self._finish(batch, p)
                    n += len(records)
                if n:
                    self.set_persisted_offset(tp, end - 1)
                    self.applied += n
                    trim_heap()
                log.info(
                    "table store of partition %d: caught up with %d changelog records in %.1f s",
                    p,
                    n,
                    time.monotonic() - started,
                )
        finally:
            consumer.close()

    # -- reads -------------------------------------------------------------------------------

    def _get(self, key: bytes) -> bytes | None:
        event = current_event()
        if event is not None:
            return self._db_for_partition(event.message.partition).get(STATE + key)
        for db in self._dbs_for_key(key):
            value = db.get(STATE + key)
            if value is not None:
                return value
        return None

    def _contains(self, key: bytes) -> bool:
        return self._get(key) is not None

    def _visible_keys(self, db: Rdict) -> Iterator[bytes]:
        for key in db.keys(from_key=STATE, read_opt=bounded(STATE, _STATE_END)):
            yield key[1:]

    def _visible_items(self, db: Rdict) -> Iterator[tuple[bytes, bytes]]:
        for key, value in db.items(from_key=STATE, read_opt=bounded(STATE, _STATE_END)):
            yield key[1:], value

    # -- what the worker needs on an assignment ----------------------------------------------

    def deadlines(self, partition: int) -> RocksDeadlines:
        """The partition's deadline index (`Correlator(deadlines=)`): entries are written
        with the states, pops deleted with the partition's next write."""
        db = self._db_for_partition(partition)
        index = self._indexes[partition] = RocksDeadlines(db, partition, keep=True)
        return index

    def clock(self, partition: int) -> dict[str, datetime]:
        """The newest event time per kind of what the partition's store holds."""
        self._db_for_partition(partition)
        newest = self._clocks[partition]
        return {kind: _EPOCH + _US * us for kind, us in zip(KINDS, newest, strict=True) if us >= 0}

    def prune(self, partition: int, committed: Mapping[TP, int]) -> None:
        """Forget triggers below the committed offsets: those outputs are not in doubt."""
        db = self._db_for_partition(partition)
        for (topic, p), offset in committed.items():
            if p == partition and offset > 0:
                db.delete_range(trigger_key(topic, 0), trigger_key(topic, offset))

    def in_doubt(self, partition: int, committed: Mapping[TP, int]) -> list[CallState]:
        """The partition's states whose output came from a message at or after its topic's
        committed offset: a crash may have lost that output."""
        self.prune(partition, committed)
        db = self._db_for_partition(partition)
        found: dict[bytes, CallState] = {}
        for key in db.keys(from_key=TRIGGER, read_opt=bounded(TRIGGER, _TRIGGER_END)):
            topic, _, rest = key[1:].partition(b"\x00")
            offset, call_id = int.from_bytes(rest[:8], "big"), rest[8:]
            raw = db.get(STATE + call_id)
            if raw is None or call_id in found:
                continue
            state = decode_state(raw)
            t = state.trigger
            if (
                t is not None
                and (t.topic.encode(), t.offset) == (topic, offset)
                and t.offset >= committed.get((t.topic, partition), 0)
            ):
                found[call_id] = state
        return list(found.values())


STORES.aliases[SCHEME] = f"{__name__}:CallTable"
