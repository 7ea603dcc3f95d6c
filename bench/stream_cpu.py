"""Where the CPU goes while the streaming pipeline drains a backlog: workers, sink, broker.

    python bench/stream_cpu.py --calls 150000 --workers 2

On a fresh local broker, after the warm-up pass of bench/stream_bench.py, the worker(s)
(default engine) and the sink start and, once every worker is assigned, a backlog of
simulated traffic is produced. From then (or once a `--warm` fraction of it is committed)
until the workers committed the rest, the user + system CPU time of every process - the
broker's JVM included, per thread name with `--threads` - is sampled from /proc. Prints
events/s and CPU µs per event per process; `--profile DIR` also records a py-spy profile of
each Python process over the same window.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pipeline.demo import Pipeline
from pipeline.kafka.broker import LocalKafka
from pipeline.kafka.topics import ensure_topics
from pipeline.simulate import SimConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stream_bench import (  # noqa: E402
    backlog_into_running_pipeline,
    free_port,
    timed_drain,
    warm_up,
)

CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "config"


def cpu_seconds(pid: int, parent: str = "") -> float:
    with open(f"/proc/{parent}{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread name of a process (all threads of one name summed)."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            out[name] = out.get(name, 0.0) + cpu_seconds(int(task.name), f"{pid}/task/")
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread ended meanwhile
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=150_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--warmup-calls", type=int, default=50_000, help="as in bench/stream_bench.py"
    )
    parser.add_argument(
        "--warm", type=float, default=0.0, help="fraction of the backlog committed before sampling"
    )
    parser.add_argument("--threads", action="store_true", help="CPU per thread name too")
    parser.add_argument(
        "--profile", type=Path, help="also record a py-spy profile of each Python process here"
    )
    args = parser.parse_args()
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="cdrpipe-stream-cpu-"))
    kafka = LocalKafka(data_dir=tmp / "kafka", port=free_port(), controller_port=free_port())
    kafka.start()
    try:
        ensure_topics(kafka.bootstrap, 8)
        start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=2)
        pipeline = Pipeline(
            kafka.bootstrap,
            f"chdb://{tmp / 'store'}",
            tmp / "logs",
            args.workers,
            {
                "CDRPIPE_DATA": str(tmp / "data"),
                "CDRPIPE_LOGLEVEL": os.environ.get("CDRPIPE_LOGLEVEL", "WARNING"),
            },
        )
        warm_up(kafka, pipeline, args.warmup_calls, start)
        try:
            base, ends = backlog_into_running_pipeline(
                kafka,
                pipeline,
                args.workers,
                SimConfig(
                    calls=args.calls,
                    seed=5,
                    config_dir=str(CONFIG),
                    start=start,
                    reorder=0.02,
                    duplicate=0.02,
                ),
            )
            pids = {name: proc.pid for name, proc in pipeline.procs.items()}
            pids["broker"] = int(kafka.pid_file.read_text().strip())
            before: dict[str, float] = {}
            threads_before: dict[str, dict[str, float]] = {}
            spies: list[subprocess.Popen[bytes]] = []

            def start_sampling() -> None:
                spies.extend(
                    subprocess.Popen(
                        [
                            "py-spy",
                            "record",
                            "--pid",
                            str(pid),
                            "--format",
                            "raw",
                            "--rate",
                            "200",
                            "--output",
                            str(args.profile / f"{name}.txt"),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                    for name, pid in pids.items()
                    if args.profile and name != "broker"
                )
                before.update({name: cpu_seconds(pid) for name, pid in pids.items()})
                threads_before.update({name: thread_cpu(pid) for name, pid in pids.items()})

            backlog, elapsed = asyncio.run(
                timed_drain(kafka.bootstrap, base, ends, pipeline, args.warm, start_sampling)
            )
            used = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
            threads = {
                name: {
                    thread: seconds - threads_before[name].get(thread, 0.0)
                    for thread, seconds in thread_cpu(pid).items()
                }
                for name, pid in pids.items()
            }
            for spy in spies:
                spy.send_signal(signal.SIGINT)
                spy.wait()
        finally:
            pipeline.stop()
    finally:
        kafka.stop()
    print(
        f"{args.workers} worker(s): {backlog:,} events in {elapsed:.1f} s = "
        f"{backlog / elapsed:,.0f} events/s ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"{os.cpu_count()} cores)"
    )
    for name, seconds in sorted(used.items()):
        print(f"  {name:8s} {seconds:6.1f} s CPU = {1e6 * seconds / backlog:5.1f} µs per event")
        if args.threads:
            top = sorted(threads[name].items(), key=lambda kv: -kv[1])[:6]
            print("           " + ", ".join(f"{t} {s:.1f}s" for t, s in top if s >= 0.05))
    total = sum(used.values())
    print(
        f"  total    {total:6.1f} s CPU = {1e6 * total / backlog:5.1f} µs per event, "
        f"of {os.cpu_count() * elapsed:.1f} s available"
    )


if __name__ == "__main__":
    main()
