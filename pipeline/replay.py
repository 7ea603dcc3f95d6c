"""Offline replay: a JSON Lines file of gateway events -> CDRs in the store.

It runs the very `Engine` the streaming workers run, routing each call to the
partition Kafka would give it, so a replay of the simulator's file is the
reference the streaming pipeline is checked against.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from pipeline.core.correlate import DeadLetter, Settings
from pipeline.core.engine import Engine
from pipeline.core.model import CDR, Source
from pipeline.core.refdata import RefDataHolder

DEFAULT_PARTITIONS = 8
FLUSH_EVERY = 50_000


@dataclass(slots=True)
class ReplaySummary:
    """What a replay did; `final` counts are over the last CDR version of each call."""

    lines: int = 0
    events: int = 0
    cdrs: int = 0
    unrated: int = 0
    timed_out: int = 0
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
            f"dead-lettered     {self.dead_lettered} ({kinds})",
            f"duplicates        {self.duplicates}",
            f"still open        {self.still_open}",
            f"elapsed           {self.seconds:.2f} s ({rate:,.0f} lines/s)",
        ]
        return "\n".join(out)


def iter_lines(stream: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, line without its newline); blank lines are skipped."""
    for number, line in enumerate(stream, 1):
        line = line.rstrip(b"\r\n")
        if line.strip():
            yield number, line


@contextmanager
def fewer_gc_passes(gen0: int = 100_000) -> Iterator[None]:
    """Millions of short-lived objects trigger a cyclic GC pass every 700 allocations by
    default; our objects form no cycles worth chasing, so collect far less often."""
    old = gc.get_threshold()
    gc.set_threshold(gen0, old[1], old[2])
    try:
        yield
    finally:
        gc.set_threshold(*old)


class Replay:
    """Feeds lines to an `Engine` and hands finished CDRs to `sink` in batches.

    Versions of the same call inside one batch are coalesced to the newest;
    across batches the store's idempotency (by call id and revision) applies.
    """

    def __init__(
        self,
        refdata: RefDataHolder,
        sink: Callable[[list[CDR]], object],
        *,
        settings: Settings | None = None,
        partitions: int = DEFAULT_PARTITIONS,
        dead_letter: Callable[[int, DeadLetter], object] | None = None,
        flush_every: int = FLUSH_EVERY,
    ) -> None:
        self.engine = Engine(refdata, settings=settings, partitions=partitions)
        self.sink = sink
        self.dead_letter = dead_letter
        self.flush_every = flush_every
        self._pending: dict[str, CDR] = {}
        self._final: dict[str, tuple[bool, bool]] = {}  # call id -> (rated, timed_out)
        self.summary = ReplaySummary()

    def run(self, lines: Iterable[tuple[int, bytes]], name: str = "replay") -> ReplaySummary:
        with fewer_gc_passes():
            return self._run(lines, name)

    def _run(self, lines: Iterable[tuple[int, bytes]], name: str) -> ReplaySummary:
        started = time.perf_counter()
        summary = self.summary
        feed = self.engine.feed
        pending = self._pending
        for number, raw in lines:
            summary.lines += 1
            out = feed(raw, Source(name, 0, number))
            for cdr in out.cdrs:
                pending[cdr.id] = cdr
            for dead in out.dead:
                if dead.kind == "invalid":
                    summary.bad_lines.append((number, dead.reason))
                if self.dead_letter is not None:
                    self.dead_letter(number, dead)
            if len(pending) >= self.flush_every:
                self.flush()
        self.flush()
        self._summarise(time.perf_counter() - started)
        return summary

    def flush(self) -> None:
        if not self._pending:
            return
        batch = list(self._pending.values())
        self._pending.clear()
        self.sink(batch)
        for cdr in batch:
            self._final[cdr.id] = (cdr.rated, cdr.timed_out)

    def _summarise(self, seconds: float) -> None:
        c = self.engine.counters
        s = self.summary
        s.events = c["events"]
        s.duplicates = c["duplicates"]
        s.dlq_by_kind = {k[4:]: v for k, v in c.items() if k.startswith("dlq_") and v}
        s.dead_lettered = sum(s.dlq_by_kind.values())
        s.cdrs = len(self._final)
        s.unrated = sum(1 for rated, _ in self._final.values() if not rated)
        s.timed_out = sum(1 for _, timed_out in self._final.values() if timed_out)
        s.still_open = self.engine.correlator.open_calls()
        s.seconds = seconds


def replay_file(
    path: Path,
    refdata: RefDataHolder,
    sink: Callable[[list[CDR]], object],
    **kwargs: object,
) -> ReplaySummary:
    """Replay one JSON Lines file; see `Replay`."""
    replay = Replay(refdata, sink, **kwargs)  # type: ignore[arg-type]
    with path.open("rb") as stream:
        return replay.run(iter_lines(stream), name=path.name)
