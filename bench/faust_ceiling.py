"""How fast can a Faust agent *receive* messages, doing nothing with them?

    python bench/faust_ceiling.py --calls 40000

On a fresh local broker, a backlog of simulated traffic (the three input topics, 8
partitions) is consumed, in one run, by:

1. a raw aiokafka consumer (`getmany`, the ceiling of any Python consumer);
2. a Faust agent iterating `stream.events()` and counting (one event-loop cycle per message);
3. a Faust agent iterating `stream.take_events(2000, within=0.05)` (batches handed over, but
   the consumer side still makes an Event per message through the conductor and a queue).

Each Faust variant runs in its own process (`faust worker`), with a fresh group. This is why
the default worker engine is a plain aiokafka consumer group (`pipeline.stream.batch`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pipeline.kafka.broker import LocalKafka
from pipeline.kafka.topics import INPUT_TOPICS, ensure_topics
from pipeline.simulate import SimConfig, generate, produce
from pipeline.stream.progress import end_offsets

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stream_bench import free_port, raw_consume_rate  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "config"

AGENT = """
import os, sys, time, logging
import faust
TOPICS = sys.argv[5].split(',')
MODE, TOTAL, BOOTSTRAP, DATA = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
app = faust.App(f"ceiling-{MODE}-{time.time()}", broker=f"kafka://{BOOTSTRAP}",
                key_serializer="raw", value_serializer="raw", store="memory://", datadir=DATA,
                topic_partitions=8, consumer_auto_offset_reset="earliest", web_enabled=False)
topic = app.topic(*TOPICS, key_serializer="raw", value_serializer="raw", partitions=8)
seen = {"n": 0, "t0": None}
def count(k):
    if seen["t0"] is None:
        seen["t0"] = time.perf_counter()
    seen["n"] += k
    if seen["n"] >= TOTAL:
        print(f"RATE={seen['n'] / (time.perf_counter() - seen['t0'])}", flush=True)
        os._exit(0)
@app.agent(topic, concurrency=1)
async def agent(stream):
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    if MODE == "events":
        async for _ in stream.events():
            count(1)
    else:
        async for batch in stream.take_events(2000, within=0.05):
            count(len(batch))
sys.argv = [sys.argv[0], "worker", "-l", "warn"]
app.main()
"""


def faust_rate(mode: str, total: int, bootstrap: str, tmp: Path) -> float:
    script = tmp / "agent.py"
    script.write_text(AGENT)
    out = subprocess.run(
        [
            sys.executable,
            str(script),
            mode,
            str(total),
            bootstrap,
            str(tmp / f"faust-{mode}"),
            ",".join(INPUT_TOPICS),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    found = re.search(r"RATE=(\d+(?:\.\d+)?)", out.stdout + out.stderr)
    if found:
        return float(found.group(1))
    raise RuntimeError(f"the Faust agent reported no rate:\n{out.stderr[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=40_000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cdrpipe-faust-ceiling-"))
    kafka = LocalKafka(data_dir=tmp / "kafka", port=free_port(), controller_port=free_port())
    kafka.start()
    try:
        ensure_topics(kafka.bootstrap, 8)
        start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=2)
        sim = generate(SimConfig(calls=args.calls, seed=5, config_dir=str(CONFIG), start=start))
        asyncio.run(produce(sim.messages, kafka.bootstrap))
        total = sum(asyncio.run(end_offsets(kafka.bootstrap, INPUT_TOPICS)).values())
        raw = asyncio.run(raw_consume_rate(kafka.bootstrap, total))
        events = faust_rate("events", total, kafka.bootstrap, tmp)
        take = faust_rate("take", total, kafka.bootstrap, tmp)
    finally:
        kafka.stop()
    machine = f"{platform.machine()}, {os.cpu_count()} cores"
    print(
        "| date | machine | messages | raw aiokafka getmany | Faust stream.events() "
        "| Faust take_events(2000) |"
    )
    print(
        f"| {datetime.now(UTC):%Y-%m-%d} | {machine} | {total:,} | {raw:,.0f}/s | "
        f"{events:,.0f}/s ({events / raw:.3f}) | {take:,.0f}/s ({take / raw:.3f}) |"
    )


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"({time.perf_counter() - started:.0f} s)")
