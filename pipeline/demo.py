"""The end-to-end demo: local broker, workers and sink as real processes, simulated traffic.

It is also the process layout the integration tests and benchmarks use, so
`Pipeline` (start/stop the processes) lives here and is imported by them.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pipeline import config
from pipeline.kafka.topics import INPUT_TOPICS, TOPIC_CDR, TOPIC_DLQ
from pipeline.stream.progress import SINK_GROUP, WORKER_GROUP, end_offsets, wait_caught_up


@dataclass
class Pipeline:
    """Worker and sink processes of one pipeline, each with its own log file."""

    bootstrap: str
    store: str | None
    log_dir: Path
    workers: int = 1
    env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def _spawn(
        self, name: str, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "CDRPIPE_KAFKA": self.bootstrap, **self.env, **(env or {})}
        if self.store:
            env["CDRPIPE_STORE"] = self.store
        with (self.log_dir / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "pipeline.cli", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self.procs[name] = proc
        return proc

    def start_worker(
        self, index: int, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        return self._spawn(f"worker{index}", "worker", "--name", f"worker{index}", env=env)

    def start_sink(self, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        return self._spawn("sink", "sink", env=env)

    def start(self) -> None:
        self.start_sink()
        for i in range(self.workers):
            self.start_worker(i)

    def stop(self, name: str | None = None, sig: int = signal.SIGTERM, timeout: float = 60) -> None:
        names = [name] if name else list(self.procs)
        for n in names:
            proc = self.procs[n]
            if proc.poll() is None:
                proc.send_signal(sig)
        for n in names:
            proc = self.procs.pop(n)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def check_alive(self) -> None:
        dead = {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}
        if dead:
            raise RuntimeError(f"pipeline processes exited: {dead}; see logs in {self.log_dir}")

    def wait_stored(self, *, timeout_s: float, settle_s: float = 3.0) -> dict[str, int]:
        """Wait until workers consumed every input and the sink stored every CDR record;
        raises as soon as one of the processes dies."""
        return asyncio.run(
            wait_caught_up(
                self.bootstrap,
                {WORKER_GROUP: INPUT_TOPICS, SINK_GROUP: (TOPIC_CDR,)},
                timeout_s=timeout_s,
                settle_s=settle_s,
                check=self.check_alive,
            )
        )


def run_demo(
    *, calls: int, workers: int, out_dir: Path, store: str | None, rate: float | None
) -> int:
    from pipeline.kafka.broker import LocalKafka
    from pipeline.kafka.topics import ensure_topics
    from pipeline.simulate import SimConfig, generate, produce, write_jsonl
    from pipeline.store.client import connect
    from pipeline.store.export import write_csv
    from pipeline.store.queries import CdrFilter, totals

    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    print("1/5 starting the local Kafka broker (first run fetches the jars with Maven)...")
    kafka = LocalKafka()
    kafka.start()
    ensure_topics(kafka.bootstrap, config.partitions())
    dlq_before = sum(asyncio.run(end_offsets(kafka.bootstrap, (TOPIC_DLQ,))).values())

    print(f"2/5 starting {workers} worker(s) and the store sink...")
    # Short deadlines so that never-ending calls and orphans close within the demo.
    env = {"CDRPIPE_MAX_CALL_S": "120", "CDRPIPE_ORPHAN_WAIT_S": "30"}
    pipeline = Pipeline(kafka.bootstrap, store, out_dir / "logs", workers, env)
    pipeline.start()
    try:
        now = datetime.now(UTC).replace(second=0, microsecond=0)
        seed = int(time.time())
        cfg = SimConfig(
            calls=calls,
            seed=seed,
            config_dir=str(config.config_dir()),
            start=now,
            reorder=0.02,
            duplicate=0.02,
            late=0.01,
            orphan=0.005,
            never_ending=0.005,
            malformed=0.005,
        )
        print(f"3/5 simulating {calls} calls (seed {seed}) into Kafka...")
        sim = generate(cfg)
        write_jsonl(sim.messages, out_dir / "events.jsonl")
        started = time.monotonic()
        sent = asyncio.run(produce(sim.messages, kafka.bootstrap, rate=rate))
        print(f"    produced {sent['messages']} messages in {sent['elapsed_s']:.1f}s")
        print("4/5 waiting until every CDR is stored...")
        lags = pipeline.wait_stored(timeout_s=600)
        elapsed = time.monotonic() - started
        pipeline.check_alive()
    finally:
        pipeline.stop()
    dlq = sum(asyncio.run(end_offsets(kafka.bootstrap, (TOPIC_DLQ,))).values()) - dlq_before

    print("5/5 summary and CSV exports")
    client = connect(store)
    span_from, span_to = now, now + timedelta(days=1)
    summary = {}
    for direction in ("outbound", "inbound"):
        flt = CdrFilter(direction=direction, time_from=span_from, time_to=span_to)
        summary[direction] = totals(client, flt)
        path = out_dir / f"cdrs-{direction}.csv"
        with path.open("w", newline="", encoding="utf-8") as out:
            rows = write_csv(client, flt, out)
        print(f"    {path} ({rows} rows)")
    stored = sum(t.count for t in summary.values())
    exp = sim.expected
    print()
    print(
        f"calls simulated        {exp['calls']} ({exp['outbound']} outbound, "
        f"{exp['inbound']} inbound with a start)"
    )
    print(f"messages produced      {sent['messages']}")
    with_start = exp["outbound"] + exp["inbound"]
    print(
        f"CDRs stored            {stored} of {with_start} calls with a start "
        f"({with_start - stored} still open: never-ending calls before their deadline)"
    )
    print(f"  unrated              {sum(t.unrated for t in summary.values())}")
    print(f"  timed out            {sum(t.timed_out for t in summary.values())}")
    print(
        f"dead-lettered          {dlq} (injected: malformed {exp['malformed_messages']}, "
        f"orphan messages {exp['orphan_messages']}; orphans go once their wait has passed)"
    )
    print(
        f"throughput             {sent['messages'] / elapsed:,.0f} events/s end to end "
        f"({elapsed:.1f}s until stored; lag {lags})"
    )
    print(f"logs                   {pipeline.log_dir}")
    print("the broker keeps running: `cdrpipe kafka stop` stops it")
    return 0
