"""Parallel offline replay: the partitions of a replay spread over worker processes.

`cdrpipe replay --jobs N` gives exactly what the one-process `Replay` gives (the same CDRs,
dead letters, bad-line report and summary counters, and even the same sink batches), because
nothing the `Engine` decides crosses a partition:

* every valid event goes to `partition_for(call id)` and watermarks, deadlines and call states
  are per partition, so a worker that owns whole partitions (``p % N == k``) and sees their
  lines in file order reaches the decisions the single engine reaches for them;
* an invalid message touches no state (it is dead-lettered where it is read), so a line with
  no usable call id may go to any worker;
* each worker feeds `Source(name, 0, line)` exactly as `Replay` does, so dead letters and
  call states point at the same lines;
* the parent merges the workers' outputs of a round of lines back into line order (every line
  has one worker; a line's CDRs come before its dead letters, as in `Replay`) and runs the
  shared `Collector`, so coalescing, flushes and reports happen in the same order.

Only the parent talks to the sink (chDB allows one process per data directory). Workers are
forked, so they inherit the reference data (every loaded version) and settings as they are;
they never touch the parent's store client or threads and leave with ``os._exit``.

With a `state_dir`, each worker keeps its call states in a RocksDB of its own (in one temporary
directory under `state_dir`, removed at the end), and also the flags of each of its calls'
newest CDR, which it counts for the summary at the end (a call's CDRs all come from its
worker, in the order the parent merges them). The parent opens no RocksDB: RocksDB is not
fork-safe (its background threads do not survive a fork, and a forked child's flushes then
wait forever), so the workers must be forked from a process that has not opened one; the
replay refuses to start otherwise (`pipeline.state.rocks.fork_safe`).

Data flow, bounded by `window` rounds in flight:

    parent: read lines, find the call id (`call_key`) and its partition, send the line to
            the worker of that partition; up to `window` rounds of ~`chunk_lines` lines per
            worker in flight
            --marshal-->  worker k: Engine.feed_line each line, with its partition
    worker k: CDRs, for a `RowSink` (a store's writer) as rows of their tables (`encode_row`,
              JSONCompactEachRow bytes), else as rows of plain values (times as microsecond
              ticks, money as decimal strings; pickle for anything unusual)  --marshal-->
    parent: merged in line order -> Collector -> `RowSink.write_rows` the bytes as they
            came (on the store thread, one insert at a time), or the sink CDR objects
"""

from __future__ import annotations

import contextlib
import marshal
import multiprocessing as mp
import queue
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from operator import itemgetter
from pathlib import Path
from typing import Any

from pipeline.core.correlate import DeadLetter, Deadlines
from pipeline.core.engine import Engine
from pipeline.core.model import CDR
from pipeline.core.partitioning import CanonicalPartition
from pipeline.core.refdata import RefDataHolder
from pipeline.replay.serial import (
    DEFAULT_PARTITIONS,
    FLUSH_EVERY,
    CdrOutput,
    Collector,
    ReplaySummary,
    count_final,
    fewer_gc_passes,
    final_flags,
    resolve_jobs,
)
from pipeline.replay.transfer import (
    DIRECTIONS,
    MARSHAL,
    MARSHAL_VERSION,
    ROWS,
    decode_cdrs,
    decode_rows,
    encode_cdrs,
    encode_rows,
)

__all__ = ["ParallelReplay"]

CHUNK_LINES = 2_000  # lines per worker per round, on average
WINDOW = 8  # rounds in flight: enough work queued for the workers while the parent writes
_POLL_S = 1.0

# ------------------------------------------------------------------ worker side


def _work(
    inbox: Any,
    outbox: Any,
    refdata: RefDataHolder,
    settings: Deadlines | None,
    partitions: int,
    name: str,
    rows: bool,
    state_path: str | None,
) -> None:
    """One worker: feeds its lines, already routed, to its own Engine; one answer per round.

    Answers: ("round", cdr keys, encoding, CDRs, dead letters or None) with key
    2 * line for a CDR and (2 * line + 1, dead letter) for a dead letter; at the end
    ("done", counters, open calls, final counts or None); on failure ("error", traceback).
    With `rows`, CDRs travel as the rows of their table (`encode_row`), else as `encode_cdrs`
    makes them. With `state_path`, the call states are on disk there (`pipeline.state.rocks`),
    and the worker counts its calls' final CDRs itself (`count_final`).
    """
    db = None
    final = None
    try:
        if state_path is None:
            engine = Engine(refdata, settings=settings, partitions=partitions)
        else:
            from pipeline.state.rocks import RocksFinal, RocksStates, open_db

            db = open_db(state_path)
            states = RocksStates(db)
            engine = Engine(refdata, states, settings, partitions, deadlines=states.deadlines)
            final = RocksFinal(db)
        feed = engine.feed_line
        with fewer_gc_passes() as freeze_survivors:
            while True:
                message = inbox.get()
                if message is None:
                    break
                freeze_survivors()
                numbers, raws, routed = marshal.loads(message)
                keys: list[int] = []
                cdrs: list[CDR] = []
                dead: list[tuple[int, DeadLetter]] = []
                for number, raw, partition in zip(numbers, raws, routed, strict=True):
                    # = Engine.feed(raw, Source(name, 0, number), partition of a valid event)
                    out = feed(raw, name, number, partition if partition >= 0 else None)
                    if out.cdrs:
                        for cdr in out.cdrs:
                            keys.append(2 * number)
                            cdrs.append(cdr)
                    if out.dead:
                        for letter in out.dead:
                            dead.append((2 * number + 1, letter))
                if final is not None and cdrs:
                    final.update(final_flags(cdrs))
                if not cdrs:
                    encoding, payload = MARSHAL, b""
                elif rows:
                    encoding, payload = ROWS, encode_rows(cdrs)
                else:
                    encoding, payload = encode_cdrs(cdrs)
                outbox.put(("round", keys, encoding, payload, dead or None))
        counted = None if final is None else count_final(final.values())
        outbox.put(("done", dict(engine.counters), engine.correlator.open_calls(), counted))
    except BaseException:  # reported to the parent, which raises
        outbox.put(("error", traceback.format_exc()))
    finally:
        if db is not None:
            db.close()


# ------------------------------------------------------------------ parent side


class _Counted:
    """The parent's record of final CDRs when the workers keep and count it themselves."""

    def update(self, items: object) -> None:
        pass

    def values(self) -> Iterable[tuple[bool, bool, bool]]:
        return ()


class ParallelReplay(Collector):
    """`Replay` over `jobs` forked worker processes (0 = one per CPU, at most one per
    partition); same constructor and `run` as `Replay`, same outcome."""

    def __init__(
        self,
        refdata: RefDataHolder,
        sink: CdrOutput,
        *,
        jobs: int = 0,
        settings: Deadlines | None = None,
        partitions: int = DEFAULT_PARTITIONS,
        dead_letter: Callable[[int, DeadLetter], object] | None = None,
        flush_every: int = FLUSH_EVERY,
        chunk_lines: int = CHUNK_LINES,
        window: int = WINDOW,
        state_dir: Path | str | None = None,
    ) -> None:
        super().__init__(sink, dead_letter=dead_letter, flush_every=flush_every)
        self.state_dir = state_dir
        self.refdata = refdata
        self.settings = settings
        self.partitions = partitions
        self.jobs = resolve_jobs(jobs, partitions)
        self.chunk_lines = max(1, chunk_lines)
        self.window = max(1, window)
        self._store_thread: ThreadPoolExecutor | None = None
        self._storing: Future[object] | None = None

    def run(self, lines: Iterable[tuple[int, bytes]], name: str = "replay") -> ReplaySummary:
        with fewer_gc_passes() as freeze_survivors, ExitStack() as stack:
            self._freeze_survivors = freeze_survivors
            return self._run(lines, name, stack)

    def _run(
        self, lines: Iterable[tuple[int, bytes]], name: str, stack: ExitStack
    ) -> ReplaySummary:
        started = time.perf_counter()
        ctx = mp.get_context("fork")
        jobs = self.jobs
        scratch: Path | None = None
        if self.state_dir is not None:
            from pipeline.state.rocks import fork_safe, scratch_dir

            if not fork_safe():
                raise RuntimeError(
                    "this process has opened a RocksDB, which is not fork-safe: a parallel replay"
                    " with its states on disk must start from a process that has not (a fresh"
                    " `cdrpipe replay`), or replay with --jobs 1"
                )
            scratch = stack.enter_context(scratch_dir(self.state_dir))
            self._final = _Counted()  # the workers count
        self._inboxes = [ctx.Queue() for _ in range(jobs)]
        self._outboxes = [ctx.Queue() for _ in range(jobs)]
        self._procs = [
            ctx.Process(
                target=_work,
                args=(
                    inbox,
                    outbox,
                    self.refdata,
                    self.settings,
                    self.partitions,
                    name,
                    self.rows is not None,
                    None if scratch is None else str(scratch / f"worker-{k}"),
                ),
                name=f"cdrpipe-replay-{k}",
                daemon=True,
            )
            for k, (inbox, outbox) in enumerate(zip(self._inboxes, self._outboxes, strict=True))
        ]
        # A forked child flushes its copy of these buffers when it ends: empty them first.
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError, AttributeError):
                stream.flush()
        for proc in self._procs:
            proc.start()
        clean = False
        try:
            self.summary.lines = self._route(lines)
            counters: Counter[str] = Counter()
            still_open = 0
            final: tuple[int, ...] | None = None
            for k in range(jobs):
                self._inboxes[k].put(None)
            for k in range(jobs):
                _, worker_counters, worker_open, worker_final = self._receive(k, "done")
                counters.update(worker_counters)
                still_open += worker_open
                if worker_final is not None:
                    final = tuple(map(sum, zip(final or (0, 0, 0, 0), worker_final, strict=True)))
            self.flush()
            self._stored()
            clean = True
        finally:
            self._stop(clean)
            if self._store_thread is not None:
                self._store_thread.shutdown(wait=True, cancel_futures=True)
                self._store_thread = None
        self._summarise(
            counters,
            still_open,
            time.perf_counter() - started,
            final,  # type: ignore[arg-type]
        )
        return self.summary

    def _route(self, lines: Iterable[tuple[int, bytes]]) -> int:
        """Send every line to its worker in rounds and merge the answers; returns the count."""
        numbers: list[int] = []
        raws: list[bytes] = []
        round_size = self.chunk_lines * self.jobs
        window = self.window
        self._canonical = CanonicalPartition(self.partitions)  # for `_send`
        in_flight = count = 0
        for number, raw in lines:
            numbers.append(number)
            raws.append(raw)
            if len(numbers) >= round_size:
                count += len(numbers)
                self._send(numbers, raws)
                numbers, raws = [], []
                in_flight += 1
                if in_flight >= window:
                    self._merge_round()
                    in_flight -= 1
        if numbers:
            count += len(numbers)
            self._send(numbers, raws)
            in_flight += 1
        for _ in range(in_flight):
            self._merge_round()
        return count

    def _send(self, numbers: list[int], raws: list[bytes]) -> None:
        """Route a round of lines: each line's canonical partition (`CanonicalPartition.many`:
        remembered, the ids new in the round hashed together), the worker owning that
        partition; a line without a call id goes to any worker, with no partition (-1)."""
        jobs = self.jobs
        parts: list[list[list[Any]]] = [[[], [], []] for _ in range(jobs)]
        for number, raw, partition in zip(numbers, raws, self._canonical.many(raws), strict=True):
            if partition is None:
                partition = -1
                out = parts[number % jobs]
            else:
                out = parts[partition % jobs]
            out[0].append(number)
            out[1].append(raw)
            out[2].append(partition)
        for inbox, part in zip(self._inboxes, parts, strict=True):
            inbox.put(marshal.dumps(part, MARSHAL_VERSION))

    def _receive(self, k: int, kind: str) -> tuple[Any, ...]:
        outbox, proc = self._outboxes[k], self._procs[k]
        while True:
            try:
                message = outbox.get(timeout=_POLL_S)
            except queue.Empty:
                if proc.is_alive():
                    continue
                try:  # it may have answered just before it ended
                    message = outbox.get(timeout=_POLL_S)
                except queue.Empty:
                    raise RuntimeError(
                        f"replay worker {k} ended (exit code {proc.exitcode}) without answering"
                    ) from None
            if message[0] == "error":
                raise RuntimeError(f"replay worker {k} failed:\n{message[1]}")
            if message[0] != kind:
                raise RuntimeError(f"replay worker {k}: expected {kind!r}, got {message[0]!r}")
            return message

    def _merge_round(self) -> None:
        """The answers of the oldest round in flight, back in line order, into the Collector:
        per line its CDRs, then its dead letters, then the flush check, as `Replay` does."""
        self._freeze_survivors()
        items: list[tuple[int, Any]] = []
        for k in range(self.jobs):
            _, keys, encoding, payload, dead = self._receive(k, "round")
            if keys:
                cdrs = decode_rows(payload) if encoding == ROWS else decode_cdrs(encoding, payload)
                items.extend(zip(keys, cdrs, strict=True))
            if dead:
                items.extend(dead)
        if not items:
            return
        items.sort(key=itemgetter(0))  # stable: a line's outputs keep their order
        pending = self._pending
        flush_every = self.flush_every
        dead_letter = self.dead_letter
        bad_lines = self.summary.bad_lines
        previous = -1
        for key, item in items:
            line = key >> 1
            if line != previous:
                if len(pending) >= flush_every:
                    self.flush()
                previous = line
            if key & 1:
                if item.kind == "invalid":
                    bad_lines.append((line, item.reason))
                if dead_letter is not None:
                    dead_letter(line, item)
            else:
                pending[item.id] = item
        if len(pending) >= flush_every:
            self.flush()

    def _write(self, batch: list[Any]) -> None:
        """A batch of CDRs, or of `RowEntry`s for the `RowSink`, by table."""
        if self.rows is None:
            super()._write(batch)
            return
        tables: dict[str, list[bytes]] = {direction: [] for direction in DIRECTIONS}
        for entry in batch:
            tables[entry.direction].append(entry.row)
        self._final.update([(e.id, (e.rated, e.timed_out, e.account_mismatch)) for e in batch])
        for direction, rows in tables.items():
            if rows:
                self._store(direction, rows)

    def _store(self, direction: str, rows: list[bytes]) -> None:
        """`RowSink.write_rows` on the store thread, one insert at a time and in order: an
        embedded engine inserts on this process's CPU, and while it does the parent goes on
        reading, routing and merging, so the workers are not left without lines. An insert's
        error is raised here, at the next insert, or at the end of the run."""
        assert self.rows is not None
        self._stored()
        if self._store_thread is None:
            self._store_thread = ThreadPoolExecutor(1, thread_name_prefix="cdrpipe-replay-store")
        self._storing = self._store_thread.submit(self.rows.write_rows, direction, rows)

    def _stored(self) -> None:
        """Wait for the insert in flight, if any; raises its error."""
        storing, self._storing = self._storing, None
        if storing is not None:
            storing.result()

    def _stop(self, clean: bool) -> None:
        procs = self._procs
        if not clean:
            for inbox in self._inboxes:
                inbox.cancel_join_thread()  # do not wait to hand lines to a stopped worker
            for proc in procs:
                if proc.is_alive():
                    proc.terminate()
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for q in (*self._inboxes, *self._outboxes):
            q.close()
