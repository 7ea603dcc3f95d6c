"""How fast a freshly started batch worker gets going on a waiting backlog, on the real local
broker.

    python bench/startup_bench.py --calls 150000 --rounds 3 [--base REV] [--timeline]
                                  [--config DIR]

Per measurement, on a fresh broker: `--warmup-calls` calls run through the pipeline first (the
broker's JVM compiles its paths, and the changelog holds the states a restarted worker reads
back), then the pipeline stops, a backlog of `--calls` calls (150,000 calls are ~385k events)
is produced, the sink is started and joins its group, and then one worker is launched. From
the launch on it measures:

- first CDR: launch -> the first new record on `cdr.records` is read (polled every 20 ms;
  a worker appends CDRs during a cycle and sends them at its end);
- first commit: launch -> the first commit of the worker group beyond the backlog's start
  (polled every 50 ms);
- CPU: the worker's user + system seconds (from /proc) at its first commit, in its first
  10 s and until the drain;
- drain: launch -> the group committed the whole backlog.

With `--base REV` the same runs for REV too (checked out into a temporary git worktree and
compiled, bench/ab.py), alternating with the working tree `--rounds` times, so the before and
after come from one run on this drifting machine. Worker and sink import the side's code
(PYTHONPATH, started outside the repository); broker, simulator and measurement are this
tree's. `--timeline` prints each worker's log (level info) with times since its launch;
`--config DIR` gives the workers other reference data (a production-size rate deck).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ab import ROOT, base_worktree  # bench/ is on sys.path when run as a script
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from stream_bench import group_ready

from pipeline.chaos import free_ports
from pipeline.demo import Pipeline
from pipeline.kafka.broker import LocalKafka
from pipeline.kafka.topics import INPUT_TOPICS, TOPIC_CDR, ensure_topics
from pipeline.simulate import SimConfig, SimMessage, generate, produce
from pipeline.stream.progress import SINK_GROUP, WORKER_GROUP, end_offsets

CONFIG = ROOT / "deploy" / "config"
CPU_WINDOW_S = 10.0
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a live process, None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14, 15)


@dataclass
class Startup:
    first_cdr: float = float("nan")
    first_commit: float = float("nan")
    cpu_first_commit: float = float("nan")
    cpu_window: float = float("nan")
    drain: float = float("nan")
    cpu_drain: float = float("nan")
    events: int = 0
    launched: float = 0.0  # wall time
    log: list[str] = field(default_factory=list)


async def watch(bootstrap: str, pipeline: Pipeline, timeout_s: float = 600) -> Startup:
    """Launch the worker and follow it until the group committed every input message there
    was before the launch; times are from the launch (the middle of `Popen`)."""
    ends = await end_offsets(bootstrap, INPUT_TOPICS)
    cdr_ends = await end_offsets(bootstrap, (TOPIC_CDR,))
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    before = {
        tp: m.offset for tp, m in (await admin.list_consumer_group_offsets(WORKER_GROUP)).items()
    }
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await reader.start()
    reader.assign(list(cdr_ends))
    for tp, offset in cdr_ends.items():
        reader.seek(tp, offset)
    result = Startup(events=sum(e - max(0, before.get(tp, 0)) for tp, e in ends.items()))

    t0 = time.time()
    proc = pipeline.start_worker(0)
    launch = time.time()
    launched = result.launched = (t0 + launch) / 2
    pid = proc.pid

    async def first_cdr() -> None:
        while not await reader.getmany(timeout_ms=20, max_records=1):
            pass
        result.first_cdr = time.time() - launched

    cdr_task = asyncio.create_task(first_cdr())
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            pipeline.check_alive()
            now = time.time() - launched
            cpu = cpu_seconds(pid)
            if now >= CPU_WINDOW_S and math.isnan(result.cpu_window) and cpu is not None:
                result.cpu_window = cpu
            try:
                committed = await admin.list_consumer_group_offsets(WORKER_GROUP)
            except KafkaError:
                committed = {}
            offsets = {tp: m.offset for tp, m in committed.items()}
            if math.isnan(result.first_commit) and any(
                o > max(0, before.get(tp, 0)) for tp, o in offsets.items() if tp in ends
            ):
                result.first_commit = time.time() - launched
                result.cpu_first_commit = cpu if cpu is not None else float("nan")
            if all(offsets.get(tp, 0) >= end for tp, end in ends.items()):
                result.drain = time.time() - launched
                result.cpu_drain = cpu if cpu is not None else float("nan")
                if math.isnan(result.cpu_window):
                    # drained within the window: the CPU is what it used until now
                    await asyncio.sleep(max(0.0, launched + CPU_WINDOW_S - time.time()))
                    result.cpu_window = cpu_seconds(pid) or float("nan")
                break
            await asyncio.sleep(0.05)
        else:
            raise TimeoutError("the worker did not drain the backlog")
        await asyncio.wait_for(cdr_task, 30)
    finally:
        cdr_task.cancel()
        await reader.stop()
        await admin.close()
    return result


def timeline(log: Path, launched: float) -> list[str]:
    """The worker log's lines, each with the seconds since the launch."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        stamp = line[1:24] if line.startswith("[") else ""
        try:
            t = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp() - launched
            out.append(f"  {t:+7.2f}s {line[26:]}")
        except ValueError:
            out.append(f"          {line}")
    return out


def measure(
    side: str,
    code: Path,
    tmp: Path,
    backlog: list[SimMessage],
    warmup: list[SimMessage],
    loglevel: str,
) -> Startup:
    port, controller = free_ports(2)
    stamp = f"{side}-{time.time_ns()}"
    kafka = LocalKafka(data_dir=tmp / f"kafka-{stamp}", port=port, controller_port=controller)
    kafka.start()
    logs = tmp / f"logs-{stamp}"
    env = {
        "PYTHONPATH": str(code),
        "CDRPIPE_DATA": str(tmp / f"data-{stamp}"),
        "CDRPIPE_WORKER_ENGINE": "batch",
        "CDRPIPE_LOGLEVEL": loglevel,
    }
    pipeline = Pipeline(kafka.bootstrap, f"chdb://{tmp / f'store-{stamp}'}", logs, 1, env)
    try:
        ensure_topics(kafka.bootstrap, 8)
        if warmup:
            asyncio.run(produce(warmup, kafka.bootstrap))
            pipeline.start()
            try:
                pipeline.wait_stored(timeout_s=600)
            finally:
                pipeline.stop()
            (logs / "worker0.log").rename(logs / "worker0-warmup.log")
        asyncio.run(produce(backlog, kafka.bootstrap))
        pipeline.start_sink()
        asyncio.run(group_ready(kafka.bootstrap, None, group=SINK_GROUP))
        result = asyncio.run(watch(kafka.bootstrap, pipeline))
        result.log = timeline(logs / "worker0.log", result.launched)
    finally:
        pipeline.stop()
        kafka.stop()
    return result


FIGURES = ("first_cdr", "first_commit", "cpu_first_commit", "cpu_window", "drain", "cpu_drain")


def row(side: str, n: int | str, r: Startup) -> str:
    return (
        f"| {side} | {n} | {r.events:,} | {r.first_cdr:.2f} | {r.first_commit:.2f} | "
        f"{r.cpu_first_commit:.2f} | {r.cpu_window:.2f} | {r.drain:.1f} | {r.cpu_drain:.1f} | "
        f"{r.events / r.drain:,.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", help="git revision to compare against (a git worktree)")
    parser.add_argument("--calls", type=int, default=150_000)
    parser.add_argument("--warmup-calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--timeline", action="store_true", help="print the workers' logs")
    parser.add_argument(
        "--config",
        type=Path,
        help="the workers' reference data (default deploy/config; the traffic is simulated "
        "from deploy/config either way, so a larger deck must keep its trunks and DIDs)",
    )
    args = parser.parse_args()
    if args.config:
        os.environ["CDRPIPE_CONFIG"] = str(args.config.resolve())
    logging.basicConfig(level=logging.ERROR)  # not aiokafka's retries while a broker starts
    tmp = Path(tempfile.mkdtemp(prefix="cdrpipe-startup-bench-"))
    # Started outside the repository: "" on a worker's sys.path must not be the working tree.
    os.chdir(tmp)
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=2)
    warmup = generate(
        SimConfig(calls=args.warmup_calls, seed=7, config_dir=str(CONFIG),
                  start=start - timedelta(hours=1), reorder=0.02, duplicate=0.02)
    ).messages if args.warmup_calls else []  # fmt: skip
    backlog = generate(
        SimConfig(calls=args.calls, seed=101, config_dir=str(CONFIG), start=start,
                  reorder=0.02, duplicate=0.02)
    ).messages  # fmt: skip
    header = (
        "| code | round | events | launch -> first CDR (s) | launch -> first commit (s) "
        f"| worker CPU to first commit (s) | worker CPU in first {CPU_WINDOW_S:.0f} s (s) "
        "| launch -> drained (s) | worker CPU to drain (s) | events/s from launch |\n"
        + "|---" * 10
        + "|"
    )
    results: dict[str, list[Startup]] = {}

    def run(sides: list[tuple[str, Path]]) -> None:
        print(f"{sys.version.split()[0]}, {os.cpu_count()} cores, {datetime.now(UTC):%Y-%m-%d}")
        print(header, flush=True)
        level = "info" if args.timeline else "warning"
        for n in range(1, args.rounds + 1):
            for side, code in sides:
                r = measure(side, code, tmp, backlog, warmup, level)
                results.setdefault(side, []).append(r)
                print(row(side, n, r), flush=True)
                if args.timeline:
                    print("\n".join(r.log), flush=True)
        if args.rounds > 1:
            for side, rs in results.items():
                figures = {f: statistics.median(getattr(r, f) for r in rs) for f in FIGURES}
                print(row(side, "median", Startup(events=rs[0].events, **figures)))

    if args.base:
        with base_worktree(args.base, tmp, compiled=True) as base:
            run([(f"base {args.base}", base), ("working tree", ROOT)])
    else:
        run([("working tree", ROOT)])


if __name__ == "__main__":
    main()
