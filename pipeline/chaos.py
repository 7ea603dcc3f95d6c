"""Reliability suite: the real pipeline on its worst day, checked against the offline replay.

`run_chaos` starts a local broker, worker(s) and the sink as real processes and
feeds them simulated gateway traffic (with reordering, duplicates, late events,
orphans, never-ending calls and malformed messages; shuffled further and with
a duplicate flood on top) in segments. Between segments it does harm: SIGKILLs
workers and restarts them, restarts the broker, and holds the store (the sink's
writes fail, as in an outage) for a while. A supervisor restarts any process
that dies on its own, like a container restart policy, and reports it.

At the end the stored CDRs are compared with `cdrpipe replay` of exactly the
messages that were produced: same call ids, every field equal, money totals
equal; the dead-letter topic (repeats of the same source message dropped, the
DLQ being at-least-once) must hold exactly the malformed messages and the
events of orphan calls. Recovery times, memory peaks and the sink's memory
during the outage are measured on the way.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import random
import signal
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer

from pipeline import config
from pipeline.core.correlate import Deadlines
from pipeline.core.model import CDR
from pipeline.core.partitioning import DEFAULT_PARTITIONS, PRODUCER_PARTITIONERS
from pipeline.core.refdata import RefDataHolder
from pipeline.demo import Pipeline
from pipeline.kafka.broker import LocalKafka
from pipeline.kafka.topics import (
    CO_PARTITIONED,
    INPUT_TOPICS,
    TOPIC_CDR,
    TOPIC_DLQ,
    TOPIC_TICKS,
    ensure_topics,
)
from pipeline.replay import replay_file
from pipeline.simulate import SimConfig, SimMessage, generate, produce, write_jsonl
from pipeline.store.client import connect
from pipeline.store.queries import CdrFilter, select_cdrs, totals
from pipeline.store.writer import CdrWriter
from pipeline.stream.progress import SINK_GROUP, WORKER_GROUP, committed_offsets, group_lag

DIRECTIONS = ("outbound", "inbound")
MAX_CALL_S = 1800  # event-time deadlines short enough to fire within a run
ORPHAN_WAIT_S = 300


@dataclass(frozen=True, slots=True)
class ChaosPlan:
    """What to run and what harm to do."""

    calls: int = 50_000
    workers: int = 2
    kills: int = 2
    broker_restarts: int = 1
    outage_s: float = 20.0  # 0 = no store outage
    flood: float = 0.05  # share of the traffic re-sent byte for byte as a duplicate flood
    shuffle_window: int = 400  # messages shuffled within windows of this size
    segments: int = 12
    seed: int = 7
    partitions: int = DEFAULT_PARTITIONS
    timeout_s: float = 1800.0
    partitioner: str = "murmur2"  # the gateways' (`pipeline.core.partitioning`)
    sink_kills: int = 2  # SIGKILLs of the sink: inside an insert, then between one and its commit


@dataclass(slots=True)
class ChaosReport:
    plan: ChaosPlan
    messages: int = 0
    flood_messages: int = 0
    expected_cdrs: int = 0
    stored_cdrs: int = 0
    stored_rows: int = 0  # rows as queries see them (more than stored_cdrs = doubled)
    lost: int = 0
    unexpected: int = 0
    differing: int = 0
    example_diff: str = ""
    totals_stream: dict[str, str] = field(default_factory=dict)
    totals_replay: dict[str, str] = field(default_factory=dict)
    dlq_expected: dict[str, int] = field(default_factory=dict)
    dlq_stored: dict[str, int] = field(default_factory=dict)
    dlq_replay: dict[str, int] = field(default_factory=dict)
    dlq_content_equal: bool = False
    dlq_repeats: int = 0
    kills: list[dict[str, Any]] = field(default_factory=list)
    sink_kills: list[dict[str, Any]] = field(default_factory=list)
    broker_restarts: list[dict[str, Any]] = field(default_factory=list)
    outage: dict[str, Any] = field(default_factory=dict)
    peak_rss_mib: dict[str, float] = field(default_factory=dict)
    unexpected_exits: list[str] = field(default_factory=list)
    watchdog_restarts: int = 0  # workers that re-executed themselves (commit stall or hole)
    stream_seconds: float = 0.0
    elapsed_s: float = 0.0

    @property
    def doubled(self) -> int:
        return self.stored_rows - self.stored_cdrs

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0
            and self.unexpected == 0
            and self.doubled == 0
            and self.differing == 0
            and self.stored_cdrs == self.expected_cdrs
            and self.totals_stream == self.totals_replay
            and self.dlq_content_equal
            and self.dlq_stored == self.dlq_expected == self.dlq_replay
        )

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["doubled"], out["ok"] = self.doubled, self.ok
        return out

    def render(self) -> str:
        p = self.plan
        kills = (
            ", ".join(
                f"{k['worker']} {k['recovery_s']}s ({k['resent']} re-sent)" for k in self.kills
            )
            or "none"
        )
        restarts = (
            ", ".join(
                f"down {r['down_s']}s, workers committing again after {r['recovery_s']}s"
                for r in self.broker_restarts
            )
            or "none"
        )
        o = self.outage
        outage = (
            f"{o['seconds']}s, sink RSS {o['sink_rss_before_mib']} -> peak "
            f"{o['sink_rss_peak_mib']} MiB, cdr.records backlog {o['backlog_at_end']}"
            if o
            else "none"
        )
        lines = [
            f"chaos run: {p.calls} calls, {p.workers} worker(s), seed {p.seed}, "
            f"{p.partitioner} producers",
            f"messages produced      {self.messages} (duplicate flood {self.flood_messages})",
            f"CDRs expected (replay) {self.expected_cdrs}",
            f"CDRs stored            {self.stored_cdrs}",
            f"lost                   {self.lost}",
            f"doubled                {self.doubled}",
            f"unexpected             {self.unexpected}",
            f"fields differing       {self.differing} {self.example_diff}",
            f"money equal            {self.totals_stream == self.totals_replay}",
            f"DLQ expected           {self.dlq_expected} (replay: {self.dlq_replay})",
            f"DLQ stored             {self.dlq_stored} (content equal: {self.dlq_content_equal};"
            f" {self.dlq_repeats} repeats of an already dead-lettered source message dropped)",
            f"worker kills           {len(self.kills)}: recovery {kills}",
            f"sink kills             {len(self.sink_kills)}: "
            + (", ".join(f"{k['point']} (exit {k['exit']})" for k in self.sink_kills) or "none"),
            f"broker restarts        {len(self.broker_restarts)}: {restarts}",
            f"store outage           {outage}",
            f"peak RSS (MiB)         {self.peak_rss_mib}",
            f"unexpected exits       {self.unexpected_exits or 'none'}",
            f"worker self-restarts   {self.watchdog_restarts} (commit stall or offset hole)",
            f"streaming time         {self.stream_seconds:.0f}s, whole run {self.elapsed_s:.0f}s",
            f"RESULT                 {'PASS' if self.ok else 'FAIL'}",
        ]
        return "\n".join(lines)


def rss_mib(pid: int) -> float | None:
    """Resident memory of a process from /proc (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


# Loaded by the sink (PYTHONPATH): when the run writes a kill point into the file named by
# CDRPIPE_CHAOS_SINK_KILL, the sink SIGKILLs itself at that point of its next insert: inside
# it (a millisecond in, from another thread) or after it returned, before its commit.
SINK_KILLER = """
import os, signal, threading
from pipeline.store import writer

_write = writer.CdrWriter.write_json


def write_json(self, *args, **kwargs):
    point = None
    try:
        with open(os.environ["CDRPIPE_CHAOS_SINK_KILL"]) as f:
            point = f.read().strip()
        os.unlink(os.environ["CDRPIPE_CHAOS_SINK_KILL"])
    except OSError:
        pass
    if point == "during-insert":
        threading.Timer(0.001, os.kill, (os.getpid(), signal.SIGKILL)).start()
    result = _write(self, *args, **kwargs)
    if point is not None:
        os.kill(os.getpid(), signal.SIGKILL)
    return result


writer.CdrWriter.write_json = write_json
"""
SINK_KILL_POINTS = ("during-insert", "before-commit")


class Supervisor(threading.Thread):
    """Samples memory of the pipeline's processes and restarts any that die unasked."""

    def __init__(self, pipeline: Pipeline, spawn: dict[str, Any]) -> None:
        super().__init__(daemon=True, name="chaos-supervisor")
        self.pipeline = pipeline
        self.spawn = spawn  # name -> callable that starts it again
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.peak: dict[str, float] = {}
        self.exits: list[str] = []
        self.watch: dict[str, list[float]] = {}  # name -> samples, while someone watches

    def run(self) -> None:
        while not self.stopping.wait(0.5):
            with self.lock:
                for name, proc in list(self.pipeline.procs.items()):
                    code = proc.poll()
                    if code is not None:
                        self.exits.append(f"{name} exited with {code}")
                        self.spawn[name]()
                        continue
                    rss = rss_mib(proc.pid)
                    if rss is None:
                        continue
                    role = name.rstrip("0123456789")
                    self.peak[role] = max(self.peak.get(role, 0.0), rss)
                    if name in self.watch:
                        self.watch[name].append(rss)

    def stop(self) -> None:
        self.stopping.set()
        self.join()


def metric(port: int, name: str) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def wait_for(check: Any, timeout_s: float, poll_s: float = 0.25) -> float | None:
    """Seconds until `check()` is true, or None after `timeout_s`."""
    began = time.monotonic()
    while time.monotonic() - began < timeout_s:
        if check():
            return round(time.monotonic() - began, 1)
        time.sleep(poll_s)
    return None


def shuffled(messages: list[SimMessage], window: int, rng: random.Random) -> list[SimMessage]:
    """Heavy reordering: every run of `window` messages in a random order."""
    out: list[SimMessage] = []
    for i in range(0, len(messages), window):
        chunk = messages[i : i + window]
        rng.shuffle(chunk)
        out.extend(chunk)
    return out


def with_flood(
    messages: list[SimMessage], share: float, rng: random.Random
) -> tuple[list[SimMessage], int]:
    """Insert a burst of byte-identical re-sends of earlier messages two thirds of the way in."""
    at = len(messages) * 2 // 3
    count = int(len(messages) * share)
    flood = rng.choices(messages[:at], k=count)
    return messages[:at] + flood + messages[at:], count


def segments(messages: list[SimMessage], n: int) -> Iterator[list[SimMessage]]:
    size = -(-len(messages) // n)
    for i in range(0, len(messages), size):
        yield messages[i : i + size]


def free_ports(count: int) -> list[int]:
    """Distinct ports the OS just had free (held open together so they cannot repeat)."""
    import socket

    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def read_dlq(bootstrap: str) -> list[Any]:
    """Every message on the dead-letter topic."""

    async def consume() -> list[Any]:
        consumer = AIOKafkaConsumer(
            TOPIC_DLQ,
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            out: list[Any] = []
            while True:
                batch = await consumer.getmany(timeout_ms=3000)
                if not batch:
                    return out
                for messages in batch.values():
                    out.extend(messages)
        finally:
            await consumer.stop()

    return asyncio.run(consume())


def dump_store(dsn: str) -> tuple[dict[str, CDR], int]:
    """Stored CDRs by call id (as queries see them) and the number of rows queries return."""
    client = connect(dsn)
    try:
        rows = [c for d in DIRECTIONS for c in select_cdrs(client, CdrFilter(direction=d))]
    finally:
        client.close()
    return {c.id: c for c in rows}, len(rows)


def money_totals(dsn: str) -> dict[str, str]:
    """Count and money sums per direction, as the store computes them."""
    client = connect(dsn)
    try:
        out = {}
        for d in DIRECTIONS:
            t = totals(client, CdrFilter(direction=d))
            for name, value in dataclasses.asdict(t).items():
                out[f"{d}.{name}"] = str(value)
        return out
    finally:
        client.close()


def expected_dead_letters(messages: list[SimMessage]) -> Counter[tuple[str, bytes]]:
    """(kind, bytes) of what must be dead-lettered: every malformed message sent, and each
    distinct event of a call that never got a start."""
    out: Counter[tuple[str, bytes]] = Counter()
    by_call: dict[str, set[bytes]] = {}
    with_start: set[str] = set()
    for m in messages:
        if m.tag.startswith("malformed"):
            out["invalid", m.value] += 1
            continue
        event = orjson.loads(m.value)
        by_call.setdefault(event["id"], set()).add(m.value)
        if event["event"] == "start":
            with_start.add(event["id"])
    for call_id, values in by_call.items():
        if call_id not in with_start:
            for value in values:
                out["orphan", value] += 1
    return out


class ChaosRun:
    """One run of the suite in `work_dir` (broker data, stores, logs, events file)."""

    def __init__(self, plan: ChaosPlan, work_dir: Path, log: Any = print) -> None:
        self.plan = plan
        self.work = work_dir.resolve()
        self.log = log
        self.rng = random.Random(plan.seed)
        self.report = ChaosReport(plan)
        self.settings = Deadlines(
            max_call_duration=timedelta(seconds=MAX_CALL_S),
            orphan_wait=timedelta(seconds=ORPHAN_WAIT_S),
        )
        self.hold_file = self.work / "store-hold"
        self.sink_kill_file = self.work / "sink-kill"
        self.sink_killing: list[threading.Thread] = []
        self.stream_store = f"chdb://{self.work / 'stream-store'}"
        self.replay_store = f"chdb://{self.work / 'replay-store'}"

    # ------------------------------------------------------------------ set-up
    def traffic(self) -> list[SimMessage]:
        """The simulated traffic, shuffled, with a duplicate flood, then a closing stretch.

        The closing stretch is ordinary calls well after the rest, on every
        partition: event time passes every deadline, so each never-ending call
        is timed out and each orphan dead-lettered, in the stream as in the replay.
        """
        p = self.plan
        start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=8)
        sim = generate(
            SimConfig(
                calls=p.calls,
                seed=p.seed,
                config_dir=str(config.config_dir()),
                start=start,
                call_rate=50.0,
                max_duration=MAX_CALL_S - 300,
                reorder=0.05,
                duplicate=0.05,
                late=0.02,
                orphan=0.01,
                never_ending=0.01,
                malformed=0.005,
                id_tag=f"x{p.seed}-",
            )
        )
        messages = shuffled(sim.messages, p.shuffle_window, self.rng)
        messages, self.report.flood_messages = with_flood(messages, p.flood, self.rng)
        span = timedelta(seconds=p.calls / 50.0 + MAX_CALL_S + ORPHAN_WAIT_S + 600)
        tail = generate(
            SimConfig(
                calls=50 * p.partitions,
                seed=p.seed + 1,
                config_dir=str(config.config_dir()),
                start=start + span,
                id_tag=f"tail{p.seed}-",
            )
        )
        messages += tail.messages
        self.report.messages = len(messages)
        self.calls_with_start = sum(
            s.expected["outbound"] + s.expected["inbound"] for s in (sim, tail)
        )
        return messages

    def run(self) -> ChaosReport:
        began = time.monotonic()
        p = self.plan
        self.work.mkdir(parents=True, exist_ok=True)
        self.hold_file.unlink(missing_ok=True)
        messages = self.traffic()
        write_jsonl(messages, self.work / "events.jsonl")
        port, controller = free_ports(2)
        self.kafka = LocalKafka(data_dir=self.work / "kafka", port=port, controller_port=controller)
        self.kafka.start()
        try:
            ensure_topics(self.kafka.bootstrap, p.partitions)
            self.stream(messages)
            self.compare(messages)
        finally:
            self.kafka.stop(timeout=30)
        self.report.elapsed_s = round(time.monotonic() - began, 1)
        return self.report

    # ------------------------------------------------------------------ streaming with harm
    def stream(self, messages: list[SimMessage]) -> None:
        p = self.plan
        env = {
            "CDRPIPE_DATA": str(self.work / "data"),
            "CDRPIPE_PARTITIONS": str(p.partitions),
            "CDRPIPE_MAX_CALL_S": str(MAX_CALL_S),
            "CDRPIPE_ORPHAN_WAIT_S": str(ORPHAN_WAIT_S),
            "CDRPIPE_IDLE_AFTER_S": "1000000",  # event time only, exactly like the replay
            "CDRPIPE_STALL_S": "30",  # the commit watchdog's patience (production: 60)
        }
        self.pipeline = Pipeline(
            self.kafka.bootstrap, self.stream_store, self.work / "logs", 0, env
        )
        self.metrics_ports = dict(
            zip([f"worker{i}" for i in range(p.workers)], free_ports(p.workers), strict=True)
        )
        spawn = {name: (lambda n=name: self.start_worker(n)) for name in self.metrics_ports}
        hooks = self.work / "hooks"
        hooks.mkdir(exist_ok=True)
        (hooks / "sitecustomize.py").write_text(SINK_KILLER)
        root = str(Path(__file__).resolve().parents[1])
        sink_env = {
            "CDRPIPE_SINK_HOLD_FILE": str(self.hold_file),
            "CDRPIPE_CHAOS_SINK_KILL": str(self.sink_kill_file),
            "PYTHONPATH": os.pathsep.join([str(hooks), root, os.environ.get("PYTHONPATH", "")]),
        }
        spawn["sink"] = lambda: self.pipeline.start_sink(sink_env)
        for start in spawn.values():
            start()
        self.supervisor = Supervisor(self.pipeline, spawn)
        self.supervisor.start()
        began = time.monotonic()
        try:
            parts = list(segments(messages, p.segments))
            harm = self.schedule(len(parts))
            for i, part in enumerate(parts):
                asyncio.run(produce(part, self.kafka.bootstrap, partitioner=p.partitioner))
                self.log(f"segment {i + 1}/{len(parts)}: {len(part)} messages produced")
                for action in harm.get(i, []):
                    action()  # while the workers still have this segment to process
                self.wait_backlog(below=max(len(part) // 2, 1000))
            self.sink_killed()
            if self.outage_thread is not None:
                self.outage_thread.join()
            self.log("all traffic produced; waiting until everything is stored")
            self.wait_stored()
            self.report.stream_seconds = round(time.monotonic() - began, 1)
            self.dlq = read_dlq(self.kafka.bootstrap)
        finally:
            self.supervisor.stop()
            self.pipeline.stop()
            self.hold_file.unlink(missing_ok=True)
        self.report.peak_rss_mib = {k: round(v, 1) for k, v in self.supervisor.peak.items()}
        self.report.unexpected_exits = self.supervisor.exits
        self.report.watchdog_restarts = sum(
            log.read_text(errors="replace").count("restarting this worker")
            for log in (self.work / "logs").glob("worker*.log")
        )

    def start_worker(self, name: str) -> None:
        index = int(name.removeprefix("worker"))
        port = str(self.metrics_ports[name])
        self.pipeline.start_worker(index, {"CDRPIPE_METRICS_PORT": port})

    def schedule(self, n_segments: int) -> dict[int, list[Any]]:
        """Harm after random segments (never the last: the run must end healthy)."""
        p = self.plan
        harm: dict[int, list[Any]] = {}
        slots = list(range(max(1, n_segments - 1)))
        for _ in range(p.kills):
            worker = f"worker{self.rng.randrange(p.workers)}"
            harm.setdefault(self.rng.choice(slots), []).append(lambda w=worker: self.kill(w))
        for _ in range(p.broker_restarts):
            harm.setdefault(self.rng.choice(slots), []).append(self.restart_broker)
        # One a segment: a kill waits for the sink's next insert, which needs fresh records.
        for i, slot in enumerate(self.rng.sample(slots, min(p.sink_kills, len(slots)))):
            point = SINK_KILL_POINTS[i % len(SINK_KILL_POINTS)]
            harm.setdefault(slot, []).append(lambda k=point: self.kill_sink(k))
        self.outage_thread: threading.Thread | None = None
        if p.outage_s > 0:
            harm.setdefault(self.rng.choice(slots[: max(1, len(slots) // 2)]), []).insert(
                0, self.begin_outage
            )
        return harm

    def resent(self) -> int:
        """Outputs sent again after recoveries, over the live workers."""
        return sum(
            int(metric(port, "cdrpipe_resent_total") or 0) for port in self.metrics_ports.values()
        )

    def kill(self, name: str) -> None:
        time.sleep(self.rng.uniform(0.0, 1.5))  # somewhere in the middle of processing
        with self.supervisor.lock:
            proc = self.pipeline.procs.pop(name)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        killed_at = time.monotonic()
        resent_before = self.resent()
        time.sleep(self.rng.uniform(0.5, 3.0))
        with self.supervisor.lock:
            self.start_worker(name)
        port = self.metrics_ports[name]
        waited = wait_for(lambda: (metric(port, "cdrpipe_assigned_partitions") or 0) > 0, 300)
        recovery = None if waited is None else round(time.monotonic() - killed_at, 1)
        time.sleep(2)  # the survivors' own rebalance after the restarted worker joined
        delta = self.resent() - resent_before
        resent = delta if delta >= 0 else None  # a survivor restarted itself meanwhile
        self.report.kills.append({"worker": name, "recovery_s": recovery, "resent": resent})
        self.log(
            f"SIGKILL {name}; back with partitions, table recovered after {recovery}s;"
            f" {resent} outputs in doubt sent again"
        )

    def kill_sink(self, point: str) -> None:
        """The sink SIGKILLs itself at `point` of its next insert (`SINK_KILLER`) and is
        started again; waited for in the background, as the insert may need the next segment.
        Not during a store outage: that samples one sink's memory through it."""
        if self.outage_thread is not None:
            self.outage_thread.join()
        with self.supervisor.lock:
            proc = self.pipeline.procs.pop("sink")
            self.sink_kill_file.write_text(point)

        def restart() -> None:
            try:
                exit_code: Any = proc.wait(600)
            except subprocess.TimeoutExpired:  # no insert meanwhile: killed from outside
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                exit_code = "no insert within 600 s"
            self.sink_kill_file.unlink(missing_ok=True)
            with self.supervisor.lock:
                self.supervisor.spawn["sink"]()
            self.report.sink_kills.append({"point": point, "exit": exit_code})
            self.log(f"sink SIGKILLed {point} (exit {exit_code}); started again")

        thread = threading.Thread(target=restart, daemon=True, name="chaos-sink-kill")
        thread.start()
        self.sink_killing.append(thread)

    def sink_killed(self) -> None:
        """Wait until the sink kills under way are done."""
        while self.sink_killing:
            self.sink_killing.pop().join()

    def restart_broker(self) -> None:
        began = time.monotonic()
        self.kafka.stop(timeout=30)
        time.sleep(self.rng.uniform(1.0, 4.0))
        self.kafka.start()
        down = round(time.monotonic() - began, 1)
        before = self.worker_commits()
        waited = wait_for(lambda: self.worker_commits() > before, 300, poll_s=0.5)
        self.report.broker_restarts.append({"down_s": down, "recovery_s": waited})
        self.log(f"broker restarted (down {down}s); workers committing again after {waited}s")

    def begin_outage(self) -> None:
        self.sink_killed()  # the outage samples the running sink
        sink = self.pipeline.procs["sink"]
        before = rss_mib(sink.pid) or 0.0
        self.hold_file.touch()
        self.supervisor.watch["sink"] = []
        self.log(f"store outage begins ({self.plan.outage_s}s)")

        def end() -> None:
            time.sleep(self.plan.outage_s)
            backlog = -1
            try:  # the broker may be restarting just now: retry, and end the outage regardless
                give_up = time.monotonic() + 60
                while backlog < 0 and time.monotonic() < give_up:
                    try:
                        lag = group_lag(self.kafka.bootstrap, SINK_GROUP, (TOPIC_CDR,))
                        backlog = asyncio.run(lag)
                    except Exception as exc:
                        self.log(f"backlog at the end of the outage not known yet: {exc!r}")
                        time.sleep(2)
            finally:
                self.hold_file.unlink()
            samples = self.supervisor.watch.pop("sink", [])
            self.report.outage = {
                "seconds": self.plan.outage_s,
                "sink_rss_before_mib": round(before, 1),
                "sink_rss_peak_mib": round(max(samples, default=before), 1),
                "backlog_at_end": backlog,
            }
            self.log(f"store outage ends: {self.report.outage}")

        self.outage_thread = threading.Thread(target=end, daemon=True)
        self.outage_thread.start()

    def worker_commits(self) -> int:
        """Sum of the workers' committed offsets, ticks included: with no input waiting (a
        fast worker drains each segment before the harm), ticks are what they commit."""
        try:
            committed = asyncio.run(committed_offsets(self.kafka.bootstrap, WORKER_GROUP))
        except Exception:  # broker still coming up
            return -1
        return sum(
            v
            for (topic, _), v in committed.items()
            if topic in INPUT_TOPICS or topic == TOPIC_TICKS
        )

    def wait_backlog(self, below: int) -> None:
        def small() -> bool:
            try:
                lag = asyncio.run(group_lag(self.kafka.bootstrap, WORKER_GROUP, CO_PARTITIONED))
            except Exception:
                return False
            return lag < below

        wait_for(small, self.plan.timeout_s / 4, poll_s=0.5)

    def wait_stored(self) -> None:
        groups = {WORKER_GROUP: CO_PARTITIONED, SINK_GROUP: (TOPIC_CDR,)}

        def done() -> bool:
            lags = [asyncio.run(group_lag(self.kafka.bootstrap, g, t)) for g, t in groups.items()]
            return all(v == 0 for v in lags)

        if wait_for(done, self.plan.timeout_s, poll_s=1.0) is None:
            raise TimeoutError(f"pipeline did not catch up; logs in {self.work / 'logs'}")
        time.sleep(3)  # a last batch in flight is committed before lags reach 0
        if not done():
            wait_for(done, 120, poll_s=1.0)

    # ------------------------------------------------------------------ the verdict
    def compare(self, messages: list[SimMessage]) -> None:
        r = self.report
        client = connect(self.replay_store)
        try:
            summary = replay_file(
                self.work / "events.jsonl",
                RefDataHolder(config.config_dir()),
                CdrWriter(client),
                settings=self.settings,
                partitions=self.plan.partitions,
            )
        finally:
            client.close()
        r.dlq_replay = dict(sorted(summary.dlq_by_kind.items()))
        stream, r.stored_rows = dump_store(self.stream_store)
        replay, _ = dump_store(self.replay_store)
        r.expected_cdrs, r.stored_cdrs = len(replay), len(stream)
        if r.expected_cdrs != self.calls_with_start:  # the reference itself must be whole
            raise AssertionError(
                f"replay made {r.expected_cdrs} CDRs of {self.calls_with_start} calls with a start"
            )
        r.lost = len(replay.keys() - stream.keys())
        r.unexpected = len(stream.keys() - replay.keys())
        same = [k for k in replay.keys() & stream.keys()]
        diff = [k for k in same if _comparable(stream[k]) != _comparable(replay[k])]
        r.differing = len(diff)
        if diff:
            r.example_diff = f"e.g. {stream[diff[0]]} != {replay[diff[0]]}"
        r.totals_stream = money_totals(self.stream_store)
        r.totals_replay = money_totals(self.replay_store)

        expected = expected_dead_letters(messages)
        seen: set[tuple[bytes, bytes, bytes]] = set()
        stored: Counter[tuple[str, bytes]] = Counter()
        for m in self.dlq:
            h = dict(m.headers)
            where = (h["dlq.topic"], h["dlq.partition"], h["dlq.offset"])
            if where in seen:
                r.dlq_repeats += 1
                continue
            seen.add(where)
            stored[h["dlq.kind"].decode(), m.value] += 1
        r.dlq_expected = _by_kind(expected)
        r.dlq_stored = _by_kind(stored)
        r.dlq_content_equal = stored == expected


def _comparable(cdr: CDR) -> CDR:
    """A CDR without its revision counter (how many versions it took is not the record)."""
    return dataclasses.replace(cdr, revision=0)


def _by_kind(letters: Counter[tuple[str, bytes]]) -> dict[str, int]:
    out: Counter[str] = Counter()
    for (kind, _), n in letters.items():
        out[kind] += n
    return dict(sorted(out.items()))


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="cdrpipe chaos", description=__doc__)
    d = ChaosPlan()
    parser.add_argument("--calls", type=int, default=d.calls)
    parser.add_argument("--workers", type=int, default=d.workers)
    parser.add_argument("--kills", type=int, default=d.kills)
    parser.add_argument(
        "--sink-kills",
        type=int,
        default=d.sink_kills,
        help="SIGKILLs of the sink, alternately inside an insert and before its commit",
    )
    parser.add_argument(
        "--partitioner",
        default=d.partitioner,
        choices=sorted(PRODUCER_PARTITIONERS),
        help="the simulated gateways' Kafka partitioner (%(default)s)",
    )
    parser.add_argument("--broker-restarts", type=int, default=d.broker_restarts)
    parser.add_argument("--outage", type=float, default=d.outage_s, help="store outage seconds")
    parser.add_argument("--flood", type=float, default=d.flood)
    parser.add_argument("--segments", type=int, default=d.segments)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--work-dir", type=Path, default=Path("var/chaos"))
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    return parser


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("aiokafka").setLevel(logging.ERROR)  # retries while the broker restarts
    plan = ChaosPlan(
        calls=args.calls,
        workers=args.workers,
        kills=args.kills,
        sink_kills=args.sink_kills,
        partitioner=args.partitioner,
        broker_restarts=args.broker_restarts,
        outage_s=args.outage,
        flood=args.flood,
        segments=args.segments,
        seed=args.seed,
    )
    work = args.work_dir / f"run-{datetime.now(UTC):%Y%m%dT%H%M%S}"
    report = ChaosRun(plan, work, log=lambda s: print(f"[{time.strftime('%H:%M:%S')}] {s}"))
    result = report.run()
    print(result.render())
    if args.json:
        args.json.write_text(json.dumps(result.as_dict(), indent=2, default=str))
    with contextlib.suppress(OSError):
        (work / "report.txt").write_text(result.render())
    return 0 if result.ok else 1
