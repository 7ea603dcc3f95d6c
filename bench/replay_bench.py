"""Replay throughput: N simulated events -> `cdrpipe replay` path -> a fresh embedded store.

    python bench/replay_bench.py --events 1000000 --jobs 1 2

Measures the whole offline path (read, validate, correlate, rate, store writes)
and, in the same run, the core alone (no store) so the two can be compared; with
several `--jobs` values, each is measured in the same run on the same file (so the
ratios compare), with its own fresh store. Prints one Markdown table row per
measurement for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import resource
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pipeline.core.model import CDR
from pipeline.core.refdata import RefDataHolder
from pipeline.replay import ReplaySummary, replay_file, resolve_jobs
from pipeline.simulate import SimConfig, generate, write_jsonl
from pipeline.store.client import connect
from pipeline.store.writer import CdrWriter

CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "config"


def cpu_seconds() -> tuple[float, float]:
    """(this process, its finished children) user + system CPU seconds so far."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime


def measured(run) -> tuple[ReplaySummary, float, float]:
    """The summary of `run()` and the CPU seconds it took in this process and in workers."""
    own0, kids0 = cpu_seconds()
    summary = run()
    own1, kids1 = cpu_seconds()
    return summary, own1 - own0, kids1 - kids0


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
) -> tuple[ReplaySummary, float, float, float]:
    """Replay into a fresh embedded store as `cdrpipe replay` does: summary, CPU (parent,
    workers), store write seconds."""
    client = connect(f"chdb://{store}")
    sink = TimedWriter(CdrWriter(client))
    try:
        full, own, kids = measured(lambda: replay_file(path, refdata, sink, jobs=jobs))
    finally:
        client.close()
    return full, own, kids, sink.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument(
        "--jobs", type=int, nargs="+", default=[1], help="worker processes to measure (0 = CPUs)"
    )
    args = parser.parse_args()
    calls = int(args.events / 2.55)  # the default mix averages ~2.55 messages per call
    tmp = Path(tempfile.mkdtemp(prefix="cdrpipe-bench-"))
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=12)
    cfg = SimConfig(
        calls=calls,
        seed=7,
        config_dir=str(CONFIG),
        start=start,
        reorder=0.02,
        duplicate=0.02,
        late=0.01,
        orphan=0.005,
        never_ending=0.005,
        malformed=0.002,
    )
    t = time.perf_counter()
    sim = generate(cfg)
    path = tmp / "events.jsonl"
    lines = write_jsonl(sim.messages, path)
    del sim
    gc.collect()
    print(f"generated {lines} events ({calls} calls) in {time.perf_counter() - t:.1f}s -> {path}")

    refdata = RefDataHolder(CONFIG)
    rows = []
    for jobs in args.jobs:
        workers = resolve_jobs(jobs, 8)
        core, core_own, core_kids = measured(
            lambda jobs=jobs: replay_file(path, refdata, lambda batch: None, jobs=jobs)
        )
        print(
            f"jobs={workers} core only:  {core.lines / core.seconds:>9,.0f} events/s "
            f"({core.seconds:.1f}s; CPU {core_own:.1f}s parent + {core_kids:.1f}s workers)"
        )

        full, own, kids, store_s = with_store(path, refdata, jobs, tmp / f"store-{workers}")
        print(full.render())
        print(
            f"jobs={workers} with store: {full.lines / full.seconds:>9,.0f} events/s "
            f"({full.seconds:.1f}s, of which store writes {store_s:.1f}s; CPU {own:.1f}s "
            f"parent + {kids:.1f}s workers = {1e6 * (own + kids) / full.lines:.1f} µs/event)"
        )
        rows.append((workers, core, full, store_s, own, kids))

    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"peak RSS: {rss_mb:.0f} MB this process, {kids_mb:.0f} MB the largest worker")
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
