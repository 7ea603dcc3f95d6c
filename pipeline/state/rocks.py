"""Call states in a local RocksDB (rocksdict, the binding Faust's RocksDB tables use).

A replay remembers every call for the memory window (24 h of event time): in Python objects
that is ~2.9 KB a call, 29 GB for a day of 10M calls. Here only the calls still waiting for
an event stay in memory; everything else, and the deadline index, is on disk, so memory
stays bounded by the calls in progress (bench/state_bench.py: tens of bytes a call).

Key spaces of one database (a byte, then):

    0x00 call id (UTF-8)                            the settled state (`codec.encode_state`)
    0x01 partition (4 bytes), due + 2**63 (8 bytes, µs since the epoch; both big-endian),
         call id                                    a deadline entry (`RocksDeadlines`), no value
    0x02 call id                                    flags of the call's newest CDR (`RocksFinal`)

Big-endian numbers make RocksDB's byte order the order of (partition, due, call id), with
call ids in code point order as Python compares them, so expiry reads the index from its
start: O(expired), never a scan. The store is scratch space for one process (one replay, one
replay worker): writes skip the write-ahead log, and a crash loses it with the process.
"""

from __future__ import annotations

import heapq
import shutil
import struct
import tempfile
from collections.abc import Iterable, Iterator, MutableMapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from rocksdict import (
    BlockBasedOptions,
    Cache,
    DBCompressionType,
    Options,
    Rdict,
    ReadOptions,
    WriteBatch,
    WriteBufferManager,
    WriteOptions,
)

from pipeline.core.correlate import CallState
from pipeline.state import codec
from pipeline.state.codec import decode_state, encode_state

__all__ = [
    "RocksDeadlines",
    "RocksFinal",
    "RocksStates",
    "deadline_key",
    "deadline_prefix",
    "fork_safe",
    "open_db",
    "scratch_dir",
]

_STATE, _DEADLINE, _FINAL = b"\x00", b"\x01", b"\x02"
_PARTITION = struct.Struct(">I")
_DUE = struct.Struct(">Q")
_BIAS = 1 << 63  # signed µs -> unsigned, order kept
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
REFILL = 1024  # deadline entries moved from disk to memory at a time, per partition

# Memory RocksDB may take, per database: up to 3 write buffers of 64 MiB (sequential writes
# are cheap to flush in big pieces) and a 64 MiB block cache for data blocks. Index and bloom
# filter blocks stay outside the cache, held by the open table files: ~3 bytes a key (30 MB
# for 10M calls). In the cache, a full cache evicted them and every lookup read a table's
# whole filter again (lookups a hundred times slower at a million calls).
WRITE_BUFFER = 64 << 20
WRITE_BUFFERS = 3
BLOCK_CACHE = 64 << 20


def deadline_prefix(partition: int) -> bytes:
    """Where a partition's deadline entries begin (`RocksDeadlines`)."""
    return _DEADLINE + _PARTITION.pack(partition)


def deadline_key(prefix: bytes, micros: int, call_id: bytes) -> bytes:
    """A deadline entry's key: `deadline_prefix`, then due (µs since the epoch) and call id,
    in an order RocksDB's byte order keeps."""
    return prefix + _DUE.pack(micros + _BIAS) + call_id


_opened = False  # a RocksDB was opened in this process, or in one it was forked from


def fork_safe() -> bool:
    """Whether a child forked from this process may use RocksDB: not once this process (or
    one it was forked from, without exec) opened a RocksDB. RocksDB starts a pool of
    background threads then, for good; a fork copies the pool but not its threads, so the
    child's flushes and compactions are queued for threads that do not exist and closing
    the database waits forever (RocksDB is not fork-safe; fork before opening, or exec)."""
    return not _opened


def open_db(
    path: Path | str,
    *,
    cache: Cache | None = None,
    write_buffer: int = WRITE_BUFFER,
    manager: WriteBufferManager | None = None,
    wal: bool = False,
) -> Rdict:
    """A RocksDB for state in `path` (created if missing): LZ4 compression on every level,
    16 KiB blocks with bloom filters (most lookups are for new calls, which miss). Not zstd
    for the bottom level, where most data ends: its compactions cost a rebuild more CPU per
    state than LZ4's (on a few cores, the rebuild's rate) for a smaller store
    (docs/BENCHMARKS.md). Without `wal` (scratch state) writes skip the write-ahead
    log; with it, they are appended but not synced: a killed process loses nothing, a
    crashed host what the OS had not written, never part of a batch.

    `cache` (a block cache) and `manager` (a cap on the write buffers) may be shared by the
    databases of one process; by default each has its own (`BLOCK_CACHE`, `WRITE_BUFFERS`
    of `write_buffer` bytes). Raises what RocksDB reports for a database it cannot open (a
    corrupt or truncated file: `paranoid_checks`)."""
    global _opened
    _opened = True
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.set_paranoid_checks(True)
    opts.set_compression_type(DBCompressionType.lz4())
    opts.set_bottommost_compression_type(DBCompressionType.lz4())
    opts.set_write_buffer_size(write_buffer)
    opts.set_max_write_buffer_number(WRITE_BUFFERS)
    if manager is not None:
        opts.set_write_buffer_manager(manager)
    opts.set_level_compaction_dynamic_level_bytes(True)
    opts.set_max_background_jobs(2)
    opts.set_keep_log_file_num(2)
    table = BlockBasedOptions()
    table.set_block_size(16 << 10)
    table.set_bloom_filter(10, False)
    table.set_block_cache(cache if cache is not None else Cache(BLOCK_CACHE))
    opts.set_block_based_table_factory(table)
    db = Rdict(str(path), opts)
    if not wal:
        db.set_write_options(NO_WAL)
    return db


NO_WAL = WriteOptions()
NO_WAL.disable_wal = True


@contextmanager
def scratch_dir(parent: Path | str) -> Iterator[Path]:
    """A new directory under `parent` (created if missing), removed with all in it on exit."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="cdrpipe-state-", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def bounded(lower: bytes, upper: bytes) -> ReadOptions:
    """Read options for iterating over the keys in [lower, upper)."""
    opts = ReadOptions()
    opts.set_iterate_lower_bound(lower)
    opts.set_iterate_upper_bound(upper)
    return opts


class ReadByGet(MutableMapping[str, CallState]):
    """A store of call states whose `get` is the read (a decode); `[]` goes through it."""

    def __getitem__(self, call_id: str) -> CallState:
        state = self.get(call_id)
        if state is None:
            raise KeyError(call_id)
        return state


class RocksStates(ReadByGet):
    """Call id -> `CallState`: open calls in a dict, settled ones (`CallState.settled`: a CDR
    exists, or the call was dead-lettered as an orphan) encoded in `db`.

    Why the split: an open call is changed by nearly every event of it and there are few
    (calls in progress, or waiting for the orphan wait or the maximum call duration); a
    settled one is mostly only remembered, until it is forgotten, and there are millions.
    Reading a settled state decodes it: a new object, to be stored again if changed (the
    `Correlator` always does). `len()` and iteration read the whole store; `open_count()`
    does not.
    """

    def __init__(self, db: Rdict) -> None:
        self.db = db
        self._open: dict[str, CallState] = {}
        # A call id known not to be / to be on disk, from the last read or write of it: the
        # correlator reads a call just before it writes or deletes it, so these spare the
        # checks a mapping's contract would otherwise need (one more disk read per call).
        self._absent: str | None = None
        self._present: str | None = None

    def open_count(self) -> int:
        """Calls waiting for an event (the `Correlator.open_calls` hook)."""
        return len(self._open)

    def deadlines(self, partition: int) -> RocksDeadlines:
        """The deadline index of a partition, in the same database (`Correlator(deadlines=)`)."""
        return RocksDeadlines(self.db, partition)

    def get(self, call_id: str, default: CallState | None = None) -> CallState | None:  # type: ignore[override]
        state = self._open.get(call_id)
        if state is not None:
            return state
        data = self.db.get(_STATE + call_id.encode())
        if data is None:
            self._absent = call_id
            return default
        self._present = call_id
        return decode_state(data)

    def settled_since(self, call_id: str) -> datetime | None:
        """For a settled call, the time its memory window runs from, read without decoding
        the state (the `Correlator`'s hook: most deadline entries that come due are a settled
        call's); None for an open or unknown call."""
        if call_id in self._open:
            return None
        data = self.db.get(_STATE + call_id.encode())
        if data is None:
            self._absent = call_id
            return None
        self._present = call_id
        return codec.settled_since(data)

    def __setitem__(self, call_id: str, state: CallState) -> None:
        # state.settled, without its two property calls (once per event)
        if state.orphaned_at is not None or (
            state.start is not None and (state.end is not None or state.timed_out_at is not None)
        ):
            self._open.pop(call_id, None)
            self.db.put(_STATE + call_id.encode(), encode_state(state))
            self._present = call_id
            if call_id == self._absent:
                self._absent = None
            return
        opened = self._open
        if call_id not in opened and call_id != self._absent:
            # Settled on disk, perhaps: an orphan whose start came opens the call anew.
            self.db.delete(_STATE + call_id.encode())
            self._absent = call_id
            if call_id == self._present:
                self._present = None
        opened[call_id] = state

    def __delitem__(self, call_id: str) -> None:
        if self._open.pop(call_id, None) is not None:
            return
        key = _STATE + call_id.encode()
        if call_id != self._present and self.db.get(key) is None:
            raise KeyError(call_id)
        self.db.delete(key)
        self._present = None
        self._absent = call_id

    def _settled_ids(self) -> Iterator[str]:
        for key in self.db.keys(from_key=_STATE, read_opt=bounded(_STATE, _DEADLINE)):
            yield key[1:].decode()

    def __iter__(self) -> Iterator[str]:
        yield from list(self._open)
        yield from self._settled_ids()

    def __len__(self) -> int:
        return len(self._open) + sum(1 for _ in self._settled_ids())

    def __contains__(self, call_id: object) -> bool:
        """Without decoding the state (the mapping default would)."""
        if not isinstance(call_id, str):
            return False
        return call_id in self._open or self.db.get(_STATE + call_id.encode()) is not None


class RocksDeadlines:
    """One partition's deadline index (a `pipeline.core.correlate.DeadlineIndex`) in the
    store's database, ordered as the correlator's heap: by due, then call id.

    The earliest entries are kept in memory: every entry up to `_bound` is in `_heap`, every
    later one on disk. A push lands on whichever side it belongs to (almost always disk: new
    deadlines lie an orphan wait, a maximum call duration or the memory window ahead); when
    the heap runs empty, the next `REFILL` entries move from disk to it, read from where the
    last move ended, so no deleted entry is read again. Expiring costs O(entries expired).
    An entry pushed twice may be kept once (on disk): the correlator checks every entry
    against the state, so that changes nothing.

    With `keep` (a store that outlives the process, `pipeline.state.checkpointed`), the
    index changes with the states it indexes, in the owner's atomic write: pushes wait in
    `pushed` (keys to write) and pops in `popped` (keys to delete) until then, so that a crash
    never leaves a state without the entry that would expire it. Every entry stays on disk
    until its pop is written; entries pushed beyond the heap's bound wait in `_ahead` until
    written, and a move takes those within its reach along, so none is skipped.
    """

    __slots__ = (
        "due",
        "read",
        "popped",
        "pushed",
        "_ahead",
        "_db",
        "_prefix",
        "_heap",
        "_bound",
        "_reads",
        "_refill",
        "_keep",
    )

    def __init__(self, db: Rdict, partition: int, refill: int = REFILL, keep: bool = False) -> None:
        self.due: datetime | None = None  # the earliest entry's, None when empty
        self.read = 0  # entries read from disk so far
        self.popped: list[bytes] = []  # keys of popped entries still on disk (`keep`)
        self.pushed: list[bytes] = []  # keys of pushed entries not on disk yet (`keep`)
        self._ahead: list[tuple[int, str]] = []  # of those, the ones beyond `_bound`
        self._db = db
        self._prefix = deadline_prefix(partition)
        self._heap: list[tuple[int, str]] = []  # (due µs, call id), every entry <= _bound
        self._bound: tuple[int, str] | None = None
        upper = (
            _DEADLINE + _PARTITION.pack(partition + 1)
            if partition < 0xFFFFFFFF
            else _FINAL  # the last partition: the next key space
        )
        self._reads = bounded(self._prefix, upper)
        self._refill = refill
        self._keep = keep
        if keep:  # entries a previous process left
            self._move()
            if self._heap:
                self.due = _EPOCH + _US * self._heap[0][0]

    def __len__(self) -> int:
        """Entries in the index (reads the partition's entries on disk)."""
        on_disk = sum(1 for _ in self._db.keys(from_key=self._prefix, read_opt=self._reads))
        if self._keep:  # every entry is on disk, popped ones until they are deleted
            return on_disk - len(self.popped)
        return len(self._heap) + on_disk

    def _key(self, micros: int, call_id: str) -> bytes:
        return deadline_key(self._prefix, micros, call_id.encode())

    def push(self, due: datetime, call_id: str) -> None:
        micros = (due - _EPOCH) // _US
        bound = self._bound
        if self._keep:
            self.pushed.append(self._key(micros, call_id))
            if bound is not None and (micros, call_id) <= bound:
                heapq.heappush(self._heap, (micros, call_id))
            else:
                self._ahead.append((micros, call_id))
        elif bound is not None and (micros, call_id) <= bound:
            heapq.heappush(self._heap, (micros, call_id))
        else:
            self._db.put(self._key(micros, call_id), b"")
        first = self.due
        if first is None or due < first:
            self.due = due

    def pop(self) -> str:
        heap = self._heap
        if not heap:
            self._move()
        micros, call_id = heapq.heappop(heap)
        if self._keep:
            self.popped.append(self._key(micros, call_id))
        if not heap:
            self._move()
        self.due = _EPOCH + _US * heap[0][0] if heap else None
        return call_id

    def _move(self) -> None:
        """Move the next `_refill` entries from disk to the (empty) heap."""
        heap = self._heap
        prefix = self._prefix
        at = len(prefix)
        bound = self._bound
        it = self._db.iter(self._reads)
        if bound is None:
            it.seek(prefix)
        else:  # where the last move ended: entries before were deleted, and are not read
            last = self._key(*bound)
            it.seek(last)
            if it.valid() and it.key() == last:  # still there until its pop is written
                it.next()
        moved = None if self._keep else WriteBatch(raw_mode=True)
        unpack = _DUE.unpack_from
        while len(heap) < self._refill and it.valid():
            key = it.key()
            heap.append((unpack(key, at)[0] - _BIAS, key[at + 8 :].decode()))  # sorted: a heap
            if moved is not None:
                moved.delete(key)
            it.next()
        del it
        if heap:
            if moved is not None:
                self._db.write(moved)
            self._bound = heap[-1]
            self.read += len(heap)
        ahead = self._ahead
        if ahead:  # pushed, not written yet: those the move reached go along
            if len(heap) < self._refill:  # the disk is exhausted: all of them
                self._bound = max(heap[-1] if heap else ahead[0], *ahead)
            bound = self._bound
            assert bound is not None
            reached = [entry for entry in ahead if entry <= bound]
            if reached:
                self._ahead = [entry for entry in ahead if entry > bound]
                for entry in reached:
                    heapq.heappush(heap, entry)

    def written(self) -> None:
        """The owner wrote `pushed` and deleted `popped` (`keep`): entries beyond the bound
        are read from disk from now on."""
        self.pushed.clear()
        self.popped.clear()
        self._ahead.clear()


_FLAGS = [(bool(f & 1), bool(f & 2), bool(f & 4)) for f in range(8)]
_FLAG_BYTES = [bytes([f]) for f in range(8)]


class RocksFinal:
    """Call id -> (rated, timed_out, account_mismatch) of its newest CDR, in `db`: what a
    replay's summary counts, kept for every call of the file (the in-memory replay keeps
    a dict of them, ~150 bytes a call)."""

    def __init__(self, db: Rdict) -> None:
        self.db = db

    def update(self, items: Iterable[tuple[str, tuple[bool, bool, bool]]]) -> None:
        batch = WriteBatch(raw_mode=True)
        for call_id, (rated, timed_out, mismatch) in items:
            batch.put(
                _FINAL + call_id.encode(), _FLAG_BYTES[rated | timed_out << 1 | mismatch << 2]
            )
        self.db.write(batch)

    def values(self) -> Iterator[tuple[bool, bool, bool]]:
        flags = _FLAGS
        for value in self.db.values(from_key=_FINAL, read_opt=bounded(_FINAL, b"\x03")):
            yield flags[value[0]]

    def __len__(self) -> int:
        return sum(1 for _ in self.values())
