"""What finding each input message's canonical partition costs a worker, against what
processing the message costs (`Engine.feed`), on the simulator's traffic.

    python bench/partitioning_bench.py [--calls 100000]

Both run in this process over the same messages, alternating, best of 5.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pipeline.core.correlate import Deadlines
from pipeline.core.engine import Engine
from pipeline.core.model import Source
from pipeline.core.partitioning import CanonicalPartition
from pipeline.core.refdata import RefDataHolder
from pipeline.simulate import SimConfig, generate

CYCLE = 2_500  # messages of one topic-partition in a worker's cycle
CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "config"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=100_000)
    args = parser.parse_args()
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=2)
    sim = generate(
        SimConfig(calls=args.calls, seed=5, config_dir=str(CONFIG), start=start, reorder=0.02)
    )
    values = [m.value for m in sim.messages]
    refdata = RefDataHolder(CONFIG)
    lookup, feed = [], []
    for _ in range(5):
        canonical = CanonicalPartition(8)
        t = time.perf_counter()
        for at in range(0, len(values), CYCLE):  # as a worker's cycle asks
            canonical.many(values[at : at + CYCLE])
        lookup.append(time.perf_counter() - t)
        engine = Engine(refdata, {}, Deadlines(), 8)
        partitions = [canonical(v) or 0 for v in values]
        t = time.perf_counter()
        for i, (v, p) in enumerate(zip(values, partitions, strict=True)):
            engine.feed(v, Source("in", p, i), p)
        feed.append(time.perf_counter() - t)
    n = len(values)
    a, b = min(lookup) / n * 1e6, min(feed) / n * 1e6
    print(f"{n:,} messages: canonical partition {a:.2f} us, Engine.feed {b:.2f} us a message")
    print(f"finding the canonical partition adds {100 * a / b:.1f}% to the core's per-message work")


if __name__ == "__main__":
    main()
