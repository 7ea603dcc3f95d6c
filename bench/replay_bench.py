"""Replay throughput: N simulated events -> `cdrpipe replay` path -> a fresh embedded store.

    python bench/replay_bench.py --events 1000000 --jobs 1 2

Measures the whole offline path (read, validate, correlate, rate, store writes) and, in the
same run, everything but the store (a sink that discards) so the two can be compared; with
several `--jobs` values, each is measured in the same run on the same file (so the ratios
compare), with its own fresh store. Prints one Markdown table row per measurement for
docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import resource
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pipeline.replay.parallel  # noqa: F401 - the whole replay path, for `_accel.compiled`
from pipeline import _accel
from pipeline.core.model import CDR
from pipeline.core.refdata import RefDataHolder
from pipeline.replay import replay_file, resolve_jobs
from pipeline.simulate import SimConfig, generate, write_jsonl
from pipeline.store.client import connect
from pipeline.store.writer import CdrWriter

CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "config"


def cpu_seconds() -> tuple[float, float]:
    """(this process, its finished children) user + system CPU seconds so far."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime


def timed(run: Callable[[], Any]) -> tuple[Any, float, float]:
    """`run()`'s result and the CPU seconds it took in this process and its workers."""
    own0, kids0 = cpu_seconds()
    result = run()
    own1, kids1 = cpu_seconds()
    return result, own1 - own0, kids1 - kids0


def in_child(run: Callable[[], Any]) -> tuple[Any, float, float]:
    """`run()` in a forked child process: its result, and the peak RSS in MB of the child and
    of the replay workers it forked. Every measurement so starts from the same small heap, as
    `cdrpipe replay` does, whatever ran before it in this process."""
    receive, send = mp.Pipe(duplex=False)

    def child() -> None:
        result = run()
        send.send((result, *(resource.getrusage(who).ru_maxrss / 1024 for who in _WHO)))

    proc = mp.get_context("fork").Process(target=child)
    proc.start()
    try:
        out = receive.recv()
    except EOFError:
        proc.join()
        raise SystemExit(f"a measurement failed (exit code {proc.exitcode})") from None
    proc.join()
    return out


_WHO = (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)


class Discard:
    """A `RowSink` that stores nothing: the replay does all its work but the store's."""

    def write(self, batch: Sequence[CDR]) -> None:
        pass

    def write_rows(self, direction: str, rows: Sequence[bytes]) -> None:
        pass


class TimedWriter:
    """The store's writer (a `RowSink`), timing its writes."""

    def __init__(self, writer: CdrWriter) -> None:
        self.writer = writer
        self.seconds = 0.0

    def write(self, batch: Sequence[CDR]) -> None:
        t0 = time.perf_counter()
        self.writer.write(batch)
        self.seconds += time.perf_counter() - t0

    def write_rows(self, direction: str, rows: Sequence[bytes]) -> None:
        t0 = time.perf_counter()
        self.writer.write_rows(direction, rows)
        self.seconds += time.perf_counter() - t0


def with_store(
    path: Path, refdata: RefDataHolder, jobs: int, store: Path
) -> tuple[Any, float, float, float]:
    """Replay into a fresh embedded store as `cdrpipe replay` does: summary, CPU seconds
    (process, workers) and store write seconds."""
    client = connect(f"chdb://{store}")
    sink = TimedWriter(CdrWriter(client))
    try:
        summary, own, kids = timed(lambda: replay_file(path, refdata, sink, jobs=jobs))
    finally:
        client.close()
    return summary, own, kids, sink.seconds


def bench_events(events: int) -> SimConfig:
    """The simulator's settings for ~`events` messages: calls of the last 12 hours, 2%
    reordered, 2% duplicated, 1% late, 0.5% orphans, 0.5% never ending, 0.2% malformed."""
    return SimConfig(
        calls=int(events / 2.55),  # the default mix averages ~2.55 messages per call
        seed=7,
        config_dir=str(CONFIG),
        start=datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=12),
        reorder=0.02,
        duplicate=0.02,
        late=0.01,
        orphan=0.005,
        never_ending=0.005,
        malformed=0.002,
    )


def write_events(cfg: SimConfig, path: Path) -> None:
    write_jsonl(generate(cfg).messages, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument(
        "--jobs", type=int, nargs="+", default=[1], help="worker processes to measure (0 = CPUs)"
    )
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cdrpipe-bench-"))
    cfg = bench_events(args.events)
    calls = cfg.calls
    t = time.perf_counter()
    path = tmp / "events.jsonl"
    # In a child process: the simulator's ~1.5 GB of messages would otherwise stay in this
    # process's heap, and every forked replay worker would start from it (cdrpipe replay's
    # workers do not).
    child = mp.get_context("fork").Process(target=write_events, args=(cfg, path))
    child.start()
    child.join()
    if child.exitcode != 0:
        raise SystemExit(f"generating the events failed (exit code {child.exitcode})")
    lines = sum(1 for _ in path.open("rb"))
    print(f"generated {lines} events ({calls} calls) in {time.perf_counter() - t:.1f}s -> {path}")

    refdata = RefDataHolder(CONFIG)
    compiled = _accel.compiled()
    print(f"modules running compiled: {len(compiled)} ({', '.join(compiled) or 'none'})")
    rows = []
    peak = [0.0, 0.0]
    for jobs in args.jobs:
        workers = resolve_jobs(jobs, 8)
        (core, core_own, core_kids), *rss = in_child(
            lambda jobs=jobs: timed(lambda: replay_file(path, refdata, Discard(), jobs=jobs))
        )
        peak = [max(a, b) for a, b in zip(peak, rss, strict=True)]
        print(
            f"jobs={workers} core only:  {core.lines / core.seconds:>9,.0f} events/s "
            f"({core.seconds:.1f}s; CPU {core_own:.1f}s parent + {core_kids:.1f}s workers)"
        )
        (full, own, kids, store_s), *rss = in_child(
            lambda jobs=jobs: with_store(path, refdata, jobs, tmp / f"store-{jobs}")
        )
        peak = [max(a, b) for a, b in zip(peak, rss, strict=True)]
        print(full.render())
        print(
            f"jobs={workers} with store: {full.lines / full.seconds:>9,.0f} events/s "
            f"({full.seconds:.1f}s, of which store writes {store_s:.1f}s; CPU {own:.1f}s "
            f"parent + {kids:.1f}s workers = {1e6 * (own + kids) / full.lines:.1f} µs/event)"
        )
        rows.append((workers, core, full, store_s, own, kids))

    print(
        f"peak RSS: {peak[0]:.0f} MB the replaying process, {peak[1]:.0f} MB the largest"
        " replay worker"
    )
    print()
    print(
        "| date | machine | events | jobs | core only (events/s) | end to end incl. store"
        " (events/s) | store share | CPU per event (parent + workers) |"
    )
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count() or 0} cores"
    for workers, core, full, store_s, own, kids in rows:
        print(
            f"| {datetime.now(UTC):%Y-%m-%d} | {machine} | {full.lines:,} | {workers} | "
            f"{core.lines / core.seconds:,.0f} | {full.lines / full.seconds:,.0f} | "
            f"{store_s / full.seconds:.0%} | {1e6 * (own + kids) / full.lines:.1f} µs |"
        )


if __name__ == "__main__":
    main()
