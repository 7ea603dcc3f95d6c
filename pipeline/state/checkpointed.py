"""Call states of a streaming worker on local disk: one RocksDB per owned partition, kept
across restarts, with a checkpoint of what it reflects.

A worker's durable state is the changelog topic. A partition's store is that changelog
materialized up to an offset, written in one atomic batch with its checkpoint: the changelog
offset it reflects, the input offsets and the partition's event-time clock of the same
moment. A worker restarted on the same host (after a crash too) opens its stores and reads
only the changelog from the checkpoint on. A store is not trusted blindly: one that cannot be
opened (a corrupt or truncated file), has no or an unreadable checkpoint (a crash during its
first build), was written by another layout or for another partition count, is ahead of the
changelog (a topic recreated) or older than the changelog keeps forgotten calls' tombstones,
is wiped and rebuilt from the changelog in bulk (`pipeline.state.restore`).

Key spaces of a partition's database (a byte, then the call id):

    0x00 call id       the call's state (`codec.encode_state`), open or settled
    0x01 ...           the deadline index (`RocksDeadlines`, entries kept until popped)
    0x05 call id       marks an open call: these are loaded into memory when the store opens
    0x06 "checkpoint"  the checkpoint (JSON)

Writes of a cycle wait in memory (`DiskStates.dirty`, read through) until the cycle's
changelog records are acknowledged, then go in one batch with the checkpoint (`flush`),
through the write-ahead log (not synced: a killed process loses nothing, a crashed host at
most the last batches, never part of one): the checkpoint found on restart always matches
the data beside it. A bulk rebuild skips the log and flushes before its checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import orjson
from rocksdict import (
    Cache,
    Rdict,
    ReadOptions,
    WriteBatch,
    WriteBufferManager,
    WriteOptions,
)

from pipeline.core.correlate import CallState, Deadlines
from pipeline.state import codec
from pipeline.state.changelog import as_encoded
from pipeline.state.codec import decode_state, encode_state
from pipeline.state.rocks import (
    BLOCK_CACHE,
    NO_WAL,
    ReadByGet,
    RocksDeadlines,
    bounded,
    deadline_key,
    deadline_prefix,
    open_db,
)

log = logging.getLogger(__name__)

__all__ = [
    "Checkpoint",
    "DiskStates",
    "PartitionStore",
    "StoreCorrupt",
    "as_encoded",
    "indexed",
]

STATE, OPEN, CHECKPOINT = b"\x00", b"\x05", b"\x06checkpoint"
_DEADLINE = b"\x01"
LAYOUT = 1  # of the key spaces and the checkpoint; a store of another layout is rebuilt
# Memory of the write buffers of all of a worker's stores together, and per store; the
# block cache is shared too. Flushed often enough that a crash leaves little to re-read.
WRITE_BUFFERS_TOTAL = 128 << 20
WRITE_BUFFER = 32 << 20
# Changelog tombstones are kept for a day (the broker's `delete.retention.ms` default): a
# store last written longer ago may have missed one, and is rebuilt.
MAX_STORE_AGE_S = 20 * 3600
_EPOCH, _US = codec.EPOCH, codec.MICROSECOND
KINDS = ("start", "connect", "end")


class StoreCorrupt(RuntimeError):
    """A read of a local store failed: the store is condemned and rebuilt on restart."""


@dataclass
class Checkpoint:
    """What a partition's store reflects: the changelog before offset `changelog`, the
    inputs before `inputs` (topic -> offset), the event-time clock `clock` (kind -> µs since
    the epoch), written at `written` (Unix time)."""

    partitions: int
    changelog: int
    inputs: dict[str, int] = field(default_factory=dict)
    clock: dict[str, int] = field(default_factory=dict)
    written: float = 0.0
    layout: int = LAYOUT
    codec: int = codec.VERSION

    def to_bytes(self) -> bytes:
        return orjson.dumps(dataclasses.asdict(self))

    @classmethod
    def from_bytes(cls, raw: bytes) -> Checkpoint:
        """Raises ValueError for anything but a checkpoint's JSON."""
        try:
            data = orjson.loads(raw)
            cp = cls(**data)
        except (orjson.JSONDecodeError, TypeError) as exc:
            raise ValueError(f"unreadable checkpoint: {exc}") from None
        if not isinstance(cp.changelog, int) or not isinstance(cp.partitions, int):
            raise ValueError("unreadable checkpoint: offsets are not integers")
        return cp

    def clock_times(self) -> dict[str, datetime]:
        return {kind: _EPOCH + _US * us for kind, us in self.clock.items()}


def clock_us(newest: dict[str, datetime]) -> dict[str, int]:
    return {kind: (ts - _EPOCH) // _US for kind, ts in newest.items()}


class PartitionStore:
    """One partition's database under `root`, opened (or, if unusable, wiped and created
    anew) by the constructor: `checkpoint` is None for a store that must be built from the
    changelog's beginning, and `problem` says why it was not usable (None: new or usable)."""

    def __init__(
        self,
        root: Path,
        partition: int,
        partitions: int,
        cache: Cache,
        manager: WriteBufferManager,
    ) -> None:
        self.path = root / f"partition-{partition}"
        self.partition = partition
        self.partitions = partitions
        self._cache, self._manager = cache, manager
        self.checkpoint: Checkpoint | None = None
        self.problem: str | None = None
        existed = self.path.exists()
        try:
            self.db = self._open()
        except Exception as exc:  # rocksdict raises plain exceptions for corruption
            self.problem = f"cannot be opened ({exc})"
            self.db = self._recreate()
            return
        if not existed:
            return
        condemned = self.path / "CONDEMNED"
        if condemned.exists():
            self.problem = f"condemned: {condemned.read_text().strip()}"
        else:
            raw = self.db.get(CHECKPOINT)
            if raw is None:
                self.problem = "has no checkpoint (its first build did not finish)"
            else:
                try:
                    cp = Checkpoint.from_bytes(raw)
                    if cp.layout != LAYOUT or cp.codec != codec.VERSION:
                        self.problem = (
                            f"has layout {cp.layout}/{cp.codec}, not {LAYOUT}/{codec.VERSION}"
                        )
                    elif cp.partitions != partitions:
                        self.problem = f"was built for {cp.partitions} partitions, not {partitions}"
                    else:
                        self.checkpoint = cp
                except ValueError as exc:
                    self.problem = str(exc)
        if self.problem is not None:
            self.db = self._recreate()

    def _open(self) -> Rdict:
        return open_db(
            self.path,
            cache=self._cache,
            write_buffer=WRITE_BUFFER,
            manager=self._manager,
            wal=True,
        )

    def _recreate(self) -> Rdict:
        if hasattr(self, "db"):
            self.db.close()
        shutil.rmtree(self.path, ignore_errors=True)
        self.checkpoint = None
        return self._open()

    def check(self, begin: int, end: int, max_age_s: float) -> str | None:
        """Compare the checkpoint with the changelog partition (`begin`..`end` its offsets):
        the reason the store must be rebuilt (it is then wiped), or None."""
        cp = self.checkpoint
        if cp is None:
            return None
        if cp.changelog > end:
            reason = f"is ahead of the changelog ({cp.changelog} > {end}: a recreated topic?)"
        elif cp.changelog < begin:
            reason = f"is behind the changelog's first record ({cp.changelog} < {begin})"
        elif time.time() - cp.written > max_age_s:
            reason = f"is older than the changelog keeps tombstones ({max_age_s:.0f} s)"
        else:
            return None
        self.problem = reason
        self.db = self._recreate()
        return reason

    def condemn(self, reason: str) -> None:
        """Mark the store as not to be trusted: the next open rebuilds it."""
        (self.path / "CONDEMNED").write_text(reason + "\n")

    def write_checkpoint(self, cp: Checkpoint) -> None:
        cp.written = time.time()
        self.db.put(CHECKPOINT, cp.to_bytes())
        self.checkpoint = cp

    def close(self) -> None:
        self.db.close()


class Rebuild:
    """Changelog records applied to a partition's store in bulk (a catch-up from the
    checkpoint, or a whole rebuild): each state as it came, its deadline into the index,
    open calls marked, and the partition's clock moved to the newest event time seen.

    Writes go straight to the database, past the write-ahead log; `finish` flushes them and
    only then writes the checkpoint, so a crash in between leaves a store whose old
    checkpoint (or none) makes the next start read the same records again."""

    def __init__(self, store: PartitionStore, settings: Deadlines) -> None:
        self.store = store
        self.settings = settings
        self.memory_us = settings.memory // _US
        self.prefix = deadline_prefix(store.partition)
        cp = store.checkpoint
        self.newest: list[int | None] = [None, None, None]
        if cp is not None:
            self.newest = [cp.clock.get(kind) for kind in KINDS]
        self.opened = {k[1:] for k in store.db.keys(from_key=OPEN, read_opt=_open_range())}
        self.marked = set(self.opened)
        self.applied = 0

    def apply(self, records: Iterable[tuple[bytes, bytes | None]]) -> None:
        # Locals for speed: this runs once per record of a rebuild. The records go in one
        # batch (a put of its own per key costs RocksDB a write of its own), written past the
        # log (preset: cheaper than options with every write).
        db = self.store.db
        db.set_write_options(NO_WAL)
        batch = WriteBatch(raw_mode=True)
        put, delete = batch.put, batch.delete
        opened, settings, memory_us = self.opened, self.settings, self.memory_us
        prefix = self.prefix
        first, second, third = (-1 if t is None else t for t in self.newest)
        n = 0
        for key, value in records:
            n += 1
            if value is None:
                delete(STATE + key)
                opened.discard(key)
                continue
            value = as_encoded(value)
            put(STATE + key, value)
            due, is_open, start, connect, end = indexed(value, settings, memory_us)
            if is_open:
                opened.add(key)
            else:
                opened.discard(key)
            put(deadline_key(prefix, due, key), b"")
            if start is not None and start > first:
                first = start
            if connect is not None and connect > second:
                second = connect
            if end is not None and end > third:
                third = end
        if n:
            db.write(batch)
        self.newest = [None if t < 0 else t for t in (first, second, third)]
        self.applied += n

    def finish(self, changelog: int, inputs: dict[str, int]) -> None:
        db = self.store.db
        for key in self.marked - self.opened:
            db.delete(OPEN + key)
        for key in self.opened - self.marked:
            db.put(OPEN + key, b"")
        if self.applied:
            db.flush(True)
        db.set_write_options(WriteOptions())  # through the log again
        clock = {kind: ts for kind, ts in zip(KINDS, self.newest, strict=True) if ts is not None}
        self.store.write_checkpoint(Checkpoint(self.store.partitions, changelog, inputs, clock))


def _open_range() -> ReadOptions:
    return bounded(OPEN, CHECKPOINT)


def _state_range() -> ReadOptions:
    return bounded(STATE, _DEADLINE)


def indexed(
    value: bytes, settings: Deadlines, memory_us: int
) -> tuple[int, bool, int | None, int | None, int | None]:
    """What a store keeps beside each state it writes, from the state's bytes: its deadline
    (µs since the epoch, `CallState.deadline`), whether the call is open, and the held
    start's, connect's and end's times (the partition's event-time clock). A settled state's
    deadline is read from the fixed part; an open one (few) is decoded."""
    since, start, connect, end = codec.times(value)
    if since is None:
        due = (decode_state(value).deadline(settings)[0] - _EPOCH) // _US
        return due, True, start, connect, end
    return since + memory_us, False, start, connect, end


class DiskStates(ReadByGet):
    """Call id -> CallState over the partition stores a worker owns (`attach`): open calls
    in memory too, settled ones decoded from disk when read. Reads and writes go to the store
    of `current`, the partition whose messages are being processed (a call's events, state
    and deadlines share its partition). A cycle's writes wait in `dirty` (read through) until
    `flush` writes them with the checkpoints."""

    def __init__(self, root: Path, partitions: int) -> None:
        self.root = root
        self.partitions = partitions
        self.cache = Cache(BLOCK_CACHE)
        self.manager = WriteBufferManager(WRITE_BUFFERS_TOTAL, False)
        self.stores: dict[int, PartitionStore] = {}
        self.indexes: dict[int, RocksDeadlines] = {}
        self.current = 0
        self.dirty: dict[str, tuple[int, CallState | None]] = {}
        self._open: dict[str, CallState] = {}
        self._open_in: dict[str, int] = {}  # open call id -> partition
        self._marked: set[str] = set()  # open call ids marked on disk

    def refresh(self) -> None:
        """Nothing derived to drop (`pipeline.stream.runtime.States`)."""

    # -- stores ------------------------------------------------------------------------------

    def open_store(self, partition: int) -> PartitionStore:
        """The partition's store, opened (kept open if already)."""
        store = self.stores.get(partition)
        if store is None:
            self.root.mkdir(parents=True, exist_ok=True)
            store = self.stores[partition] = PartitionStore(
                self.root, partition, self.partitions, self.cache, self.manager
            )
        return store

    def attach(self, partition: int) -> None:
        """After the store is current: load its open calls into memory."""
        store = self.stores[partition]
        self.indexes.pop(partition, None)
        for key in store.db.keys(from_key=OPEN, read_opt=_open_range()):
            data = store.db.get(STATE + key[1:])
            if data is None:
                continue
            state = decode_state(data)
            self._open[state.id] = state
            self._open_in[state.id] = partition
            self._marked.add(state.id)

    def detach(self, partitions: Iterable[int]) -> None:
        """Close the stores of partitions no longer owned (kept on disk for a return)."""
        gone = set(partitions)
        for call_id in [c for c, p in self._open_in.items() if p in gone]:
            del self._open[call_id], self._open_in[call_id]
            self._marked.discard(call_id)
        for p in gone:
            self.indexes.pop(p, None)
            store = self.stores.pop(p, None)
            if store is not None:
                store.close()

    def close(self) -> None:
        self.detach(list(self.stores))

    def deadlines(self, partition: int) -> RocksDeadlines:
        """The deadline index of a partition in its store (`Correlator(deadlines=)`)."""
        index = self.indexes[partition] = RocksDeadlines(
            self.stores[partition].db, partition, keep=True
        )
        return index

    # -- the mapping -------------------------------------------------------------------------

    def _read(self, call_id: str) -> bytes | None:
        store = self.stores[self.current]
        try:
            return store.db.get(STATE + call_id.encode())
        except Exception as exc:  # a block that fails its checksum, an I/O error
            store.condemn(f"read of {call_id!r} failed: {exc}")
            raise StoreCorrupt(f"partition {self.current}: {exc}") from exc

    def get(self, call_id: str, default: CallState | None = None) -> CallState | None:  # type: ignore[override]
        pending = self.dirty.get(call_id)
        if pending is not None:
            state = pending[1]
            return default if state is None else state
        state = self._open.get(call_id)
        if state is not None:
            return state
        data = self._read(call_id)
        return default if data is None else decode_state(data)

    def settled_since(self, call_id: str) -> datetime | None:
        """The `Correlator`'s hook: read without decoding for a settled call on disk."""
        if call_id in self.dirty or call_id in self._open:
            return None
        data = self._read(call_id)
        return None if data is None else codec.settled_since(data)

    def open_count(self) -> int:
        return len(self._open)

    def __setitem__(self, call_id: str, state: CallState) -> None:
        p = self.current
        self.dirty[call_id] = (p, state)
        if state.settled:
            if self._open.pop(call_id, None) is not None:
                del self._open_in[call_id]
        else:
            self._open[call_id] = state
            self._open_in[call_id] = p

    def __delitem__(self, call_id: str) -> None:
        if self.get(call_id) is None:
            raise KeyError(call_id)
        self.dirty[call_id] = (self.current, None)
        if self._open.pop(call_id, None) is not None:
            del self._open_in[call_id]

    def __contains__(self, call_id: object) -> bool:
        return isinstance(call_id, str) and self.get(call_id) is not None

    def __iter__(self) -> Iterator[str]:
        """Every call of every attached store (reads them all: for tests and tools)."""
        seen = set()
        for call_id, (_, state) in self.dirty.items():
            seen.add(call_id)
            if state is not None:
                yield call_id
        for store in list(self.stores.values()):
            for key in store.db.keys(from_key=STATE, read_opt=_state_range()):
                call_id = key[1:].decode()
                if call_id not in seen:
                    yield call_id

    def __len__(self) -> int:
        return sum(1 for _ in self)

    # -- a cycle's end -----------------------------------------------------------------------

    def changes(self) -> list[tuple[str, int, CallState | None]]:
        """(call id, partition, new state or None when forgotten) of this cycle."""
        return [(key, p, state) for key, (p, state) in self.dirty.items()]

    def flush(
        self, checkpoints: dict[int, Checkpoint], encoded: Mapping[str, bytes] | None = None
    ) -> None:
        """Write the cycle's changes, deadline index changes and `checkpoints` (per
        partition), one atomic batch per store; `encoded`: states already encoded (for the
        changelog), by call id."""
        encoded = encoded or {}
        batches: dict[int, WriteBatch] = {}

        def batch(p: int) -> WriteBatch:
            b = batches.get(p)
            if b is None:
                b = batches[p] = WriteBatch(raw_mode=True)
            return b

        marked = self._marked
        for call_id, (p, state) in self.dirty.items():
            b = batch(p)
            key = call_id.encode()
            if state is None:
                b.delete(STATE + key)
            else:
                value = encoded.get(call_id)
                b.put(STATE + key, encode_state(state) if value is None else value)
                if not state.settled:
                    if call_id not in marked:
                        b.put(OPEN + key, b"")
                        marked.add(call_id)
                    continue
            if call_id in marked:
                b.delete(OPEN + key)
                marked.discard(call_id)
        for p, index in self.indexes.items():
            if index.pushed or index.popped:
                b = batch(p)
                for key in index.pushed:
                    b.put(key, b"")
                for key in index.popped:  # after: an entry pushed and popped is gone
                    b.delete(key)
        now = time.time()
        for p, cp in checkpoints.items():
            cp.written = now
            batch(p).put(CHECKPOINT, cp.to_bytes())
        for p, b in batches.items():
            store = self.stores[p]
            store.db.write(b)
            if p in checkpoints:
                store.checkpoint = checkpoints[p]
        for index in self.indexes.values():
            index.written()
        self.dirty = {}
