"""Replay throughput: N simulated events -> `cdrpipe replay` path -> a fresh embedded store.

    python bench/replay_bench.py --events 1000000

Measures the whole offline path (read, validate, correlate, rate, store writes)
and, in the same run, the core alone (no store) so the two can be compared.
Prints one Markdown table row per measurement for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import gc
import platform
import resource
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pipeline.core.refdata import RefDataHolder
from pipeline.replay import replay_file
from pipeline.simulate import SimConfig, generate, write_jsonl
from pipeline.store.client import connect
from pipeline.store.writer import CdrWriter

CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "config"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    calls = int(args.events / 2.55)  # the default mix averages ~2.55 messages per call
    tmp = Path(tempfile.mkdtemp(prefix="cdrpipe-bench-"))
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=12)
    cfg = SimConfig(calls=calls, seed=7, config_dir=str(CONFIG), start=start, reorder=0.02,
                    duplicate=0.02, late=0.01, orphan=0.005, never_ending=0.005, malformed=0.002)
    t = time.perf_counter()
    sim = generate(cfg)
    path = tmp / "events.jsonl"
    lines = write_jsonl(sim.messages, path)
    del sim
    gc.collect()
    print(f"generated {lines} events ({calls} calls) in {time.perf_counter() - t:.1f}s -> {path}")

    refdata = RefDataHolder(CONFIG)
    core = replay_file(path, refdata, lambda batch: None)
    print(f"core only:   {core.lines / core.seconds:>9,.0f} events/s ({core.seconds:.1f}s)")

    client = connect(f"chdb://{tmp / 'store'}")
    writer = CdrWriter(client)
    store_s = 0.0

    def timed_write(batch: list) -> None:
        nonlocal store_s
        t0 = time.perf_counter()
        writer.write(batch)
        store_s += time.perf_counter() - t0

    full = replay_file(path, refdata, timed_write)
    client.close()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(full.render())
    print(f"with store:  {full.lines / full.seconds:>9,.0f} events/s ({full.seconds:.1f}s, "
          f"of which store writes {store_s:.1f}s); peak RSS {rss_mb:.0f} MB")
    print()
    print("| date | machine | events | core only (events/s) | end to end incl. store (events/s)"
          " | store share | peak RSS |")
    print(f"| {datetime.now(UTC):%Y-%m-%d} | {platform.processor() or platform.machine()}, "
          f"{_cores()} cores | {full.lines:,} | {core.lines / core.seconds:,.0f} | "
          f"{full.lines / full.seconds:,.0f} | {store_s / full.seconds:.0%} | {rss_mb:.0f} MB |")


def _cores() -> int:
    import os

    return os.cpu_count() or 0


if __name__ == "__main__":
    main()
