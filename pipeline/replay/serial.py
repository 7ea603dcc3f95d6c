"""A replay in this process (`Replay`), and what the parallel replay shares with it: the
summary, the collector of CDRs and dead letters, line reading, GC policy.

It runs the very `Engine` the streaming workers run, routing each call to the partition
Kafka would give it.

`state_dir` keeps the call states on disk (`pipeline.state.rocks`, a temporary RocksDB under
that directory, removed at the end) instead of in memory: the same outcome, in memory bounded
by the calls in progress instead of every call remembered (~2.9 KB each: 29 GB for a day of
10M calls); bench/state_bench.py measures both.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol, runtime_checkable

from pipeline.core.correlate import DeadLetter, Deadlines
from pipeline.core.engine import Engine
from pipeline.core.model import CDR
from pipeline.core.partitioning import DEFAULT_PARTITIONS
from pipeline.core.refdata import RefDataHolder

if TYPE_CHECKING:
    from rocksdict import Rdict

FLUSH_EVERY = 50_000
FREEZE_EVERY = 4_096  # lines between two `freeze_survivors()` calls (see fewer_gc_passes)


@dataclass(slots=True)
class ReplaySummary:
    """What a replay did; `final` counts are over the last CDR version of each call."""

    lines: int = 0
    events: int = 0
    cdrs: int = 0
    unrated: int = 0
    timed_out: int = 0
    account_mismatch: int = 0
    dead_lettered: int = 0
    dlq_by_kind: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    still_open: int = 0
    seconds: float = 0.0
    bad_lines: list[tuple[int, str]] = field(default_factory=list)

    def render(self) -> str:
        rate = self.lines / self.seconds if self.seconds else 0.0
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.dlq_by_kind.items())) or "none"
        out = [
            f"lines read        {self.lines}",
            f"valid events      {self.events}",
            f"CDRs written      {self.cdrs}",
            f"  unrated         {self.unrated}",
            f"  timed out       {self.timed_out}",
            f"  account mismatch {self.account_mismatch}",
            f"dead-lettered     {self.dead_lettered} ({kinds})",
            f"duplicates        {self.duplicates}",
            f"still open        {self.still_open}",
            f"elapsed           {self.seconds:.2f} s ({rate:,.0f} lines/s)",
        ]
        return "\n".join(out)


def final_flags(cdrs: Iterable[CDR]) -> list[tuple[str, tuple[bool, bool, bool]]]:
    """(call id, (rated, timed_out, account_mismatch)) of each CDR, for `count_final`."""
    return [(c.id, (c.rated, c.timed_out, "account_mismatch" in c.flags)) for c in cdrs]


def count_final(final: Iterable[tuple[bool, bool, bool]]) -> tuple[int, int, int, int]:
    """(CDRs, unrated, timed out, account mismatch) of the (rated, timed_out,
    account_mismatch) of each call's newest CDR; one pass, as they may be read from disk."""
    cdrs = unrated = timed_out = mismatch = 0
    for rated, out, mismatched in final:
        cdrs += 1
        unrated += not rated
        timed_out += out
        mismatch += mismatched
    return cdrs, unrated, timed_out, mismatch


def iter_lines(stream: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, line without its newline); blank lines are skipped."""
    for number, line in enumerate(stream, 1):
        line = line.rstrip(b"\r\n")
        if line.strip():
            yield number, line


def _nothing() -> None:
    pass


@contextmanager
def fewer_gc_passes(gen0: int = 100_000) -> Iterator[Callable[[], None]]:
    """Millions of short-lived objects trigger a cyclic GC pass every 700 allocations by
    default; our objects form no cycles worth chasing, so collect far less often.

    Yields `freeze_survivors`, for the replay loop to call every few thousand lines: what is
    alive, mostly call states kept for the memory window, goes to the permanent generation, so
    that no later pass scans it again (the older generations' passes were rescanning every
    state over and over). The replay makes no reference cycles (tests/unit/test_replay.py
    checks that a replay leaves no cyclic garbage), so no pass runs before freezing: it would
    find nothing; if there were cycles, they would be collected after the replay, when
    everything is thawed on exit. If the caller froze objects of its own, nothing is frozen
    (thawing would thaw theirs too).
    """
    old = gc.get_threshold()
    freezing = gc.get_freeze_count() == 0
    gc.set_threshold(gen0, old[1], old[2])
    try:
        # Not a closure: compiled (setup.py), one would be a reference cycle of its own.
        yield gc.freeze if freezing else _nothing
    finally:
        gc.set_threshold(*old)
        if freezing:
            gc.unfreeze()


def resolve_jobs(jobs: int, partitions: int) -> int:
    """Worker processes for `jobs` (0 = one per CPU), never more than there are partitions."""
    if jobs < 0:
        raise ValueError(f"jobs must be >= 0, got {jobs}")
    if jobs == 0:
        jobs = os.cpu_count() or 1
    return max(1, min(jobs, partitions))


@runtime_checkable
class RowSink(Protocol):
    """A sink that also takes CDRs as rows of its tables (`CdrWriter`): a parallel replay's
    workers then encode them (`encode_row`), and the parent only passes bytes on."""

    def write(self, cdrs: Sequence[CDR]) -> object: ...

    def write_rows(self, direction: str, rows: Sequence[bytes]) -> object: ...


CdrOutput = Callable[[list[CDR]], object] | RowSink


class Collector:
    """The output side of a replay: coalesces CDR versions, hands them to `sink` in batches,
    reports dead letters and keeps the summary. Shared by the one-process and the parallel
    replay so both batch, count and report alike.

    Versions of the same call inside one batch are coalesced to the newest;
    across batches the store's idempotency (by call id and revision) applies.
    `sink` is a function taking a list of CDRs or a `RowSink` (its `write` takes the CDRs).
    """

    def __init__(
        self,
        sink: CdrOutput,
        *,
        dead_letter: Callable[[int, DeadLetter], object] | None = None,
        flush_every: int = FLUSH_EVERY,
    ) -> None:
        self.rows: RowSink | None = sink if isinstance(sink, RowSink) else None
        self.sink: Callable[[list[CDR]], object] = sink.write if isinstance(sink, RowSink) else sink
        self.dead_letter = dead_letter
        self.flush_every = flush_every
        self._pending: dict[str, Any] = {}  # call id -> its newest CDR (or row, see `_write`)
        # call id -> (rated, timed_out, account_mismatch) of its newest CDR: a dict, or on
        # disk with the call states (`pipeline.state.rocks.RocksFinal`)
        self._final: Any = {}
        self.summary = ReplaySummary()

    def flush(self) -> None:
        if not self._pending:
            return
        batch = list(self._pending.values())
        self._pending.clear()
        self._write(batch)

    def _write(self, batch: list[Any]) -> None:
        """Hand a batch of CDRs to the sink and remember their final state."""
        self.sink(batch)
        self._final.update(final_flags(batch))

    def _summarise(
        self,
        counters: Mapping[str, int],
        still_open: int,
        seconds: float,
        final: tuple[int, int, int, int] | None = None,
    ) -> None:
        """Fill the summary; `final` is `count_final` of the final CDRs if they were counted
        elsewhere (by the workers of a parallel replay with states on disk)."""
        s = self.summary
        s.events = counters.get("events", 0)
        s.duplicates = counters.get("duplicates", 0)
        s.dlq_by_kind = {k[4:]: v for k, v in counters.items() if k.startswith("dlq_") and v}
        s.dead_lettered = sum(s.dlq_by_kind.values())
        if final is None:
            final = count_final(self._final.values())
        s.cdrs, s.unrated, s.timed_out, s.account_mismatch = final
        s.still_open = still_open
        s.seconds = seconds


def open_scratch(stack: ExitStack, state_dir: Path | str, name: str) -> Rdict:
    """A scratch RocksDB `name` in a new temporary directory under `state_dir`, closed and
    removed when `stack` closes."""
    from pipeline.state.rocks import open_db, scratch_dir

    db = open_db(stack.enter_context(scratch_dir(state_dir)) / name)
    stack.callback(db.close)
    return db


class Replay(Collector):
    """Feeds lines to an `Engine` and hands finished CDRs to `sink` in batches; with
    `state_dir`, the call states are on disk while `run` runs (one run per `Replay`)."""

    def __init__(
        self,
        refdata: RefDataHolder,
        sink: CdrOutput,
        *,
        settings: Deadlines | None = None,
        partitions: int = DEFAULT_PARTITIONS,
        dead_letter: Callable[[int, DeadLetter], object] | None = None,
        flush_every: int = FLUSH_EVERY,
        state_dir: Path | str | None = None,
    ) -> None:
        super().__init__(sink, dead_letter=dead_letter, flush_every=flush_every)
        self.engine = Engine(refdata, settings=settings, partitions=partitions)
        self.state_dir = state_dir

    def run(self, lines: Iterable[tuple[int, bytes]], name: str = "replay") -> ReplaySummary:
        with fewer_gc_passes() as freeze_survivors, ExitStack() as stack:
            if self.state_dir is not None:
                from pipeline.state.rocks import RocksFinal, RocksStates

                db = open_scratch(stack, self.state_dir, "replay")
                states = RocksStates(db)
                engine = self.engine
                self.engine = Engine(
                    engine.refdata,
                    states,
                    engine.correlator.settings,
                    engine.partitions,
                    deadlines=states.deadlines,
                )
                self._final = RocksFinal(db)
            return self._run(lines, name, freeze_survivors)

    def _run(
        self, lines: Iterable[tuple[int, bytes]], name: str, freeze_survivors: Callable[[], None]
    ) -> ReplaySummary:
        started = time.perf_counter()
        summary = self.summary
        feed = self.engine.feed_line
        pending = self._pending
        flush_every = self.flush_every
        dead_letter = self.dead_letter
        bad_lines = summary.bad_lines
        count = 0
        for number, raw in lines:
            count += 1
            if not count % FREEZE_EVERY:
                freeze_survivors()
            out = feed(raw, name, number)  # = Engine.feed(raw, Source(name, 0, number))
            cdrs = out.cdrs
            if cdrs:
                for cdr in cdrs:
                    pending[cdr.id] = cdr
            if out.dead:
                for dead in out.dead:
                    if dead.kind == "invalid":
                        bad_lines.append((number, dead.reason))
                    if dead_letter is not None:
                        dead_letter(number, dead)
            # Only a line with CDRs can fill the batch (as in the parallel replay's merge).
            if cdrs and len(pending) >= flush_every:
                self.flush()
        summary.lines += count
        self.flush()
        engine = self.engine
        self._summarise(
            engine.counters, engine.correlator.open_calls(), time.perf_counter() - started
        )
        return summary


#: `cdrpipe replay --state auto` keeps the call states on disk for event files larger than
#: this (some 600k calls): in memory, remembered calls take KBs each (bench/state_bench.py);
#: on disk, memory stays bounded whatever the size, for more CPU.
