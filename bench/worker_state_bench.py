"""A worker holding millions of remembered calls in its local stores, on the real local
broker: memory, disk, new-host rebuild rate and restart after SIGKILL.

    python bench/worker_state_bench.py --calls 1000000 10000000
    python bench/worker_state_bench.py --engine faust --calls 1000000 3000000

Per N, on a fresh broker (8 partitions):

1. fill: N settled calls (start, connect, end; ~1 KB encoded, the raw events included) are
   written to the changelog, each on its call's partition, as workers would have;
2. rebuild: the eight partitions' stores are built from the changelog with the worker's own
   code, as a worker new to the host builds them (`pipeline.state.restore.catch_up_apart`,
   a process per core): states/s (wall clock), and the stores' bytes on disk;
3. worker: `cdrpipe worker` starts with an empty data directory (a new host: it rebuilds the
   same way), while new calls arrive at `--rate` calls/s; once it has committed them, its RSS
   (current and peak) is read from /proc;
4. restart: the worker is killed with SIGKILL and started again on the same data directory
   while the calls keep coming: seconds from the relaunch to its first commit (the group's
   committed offsets move), and what its log says it read of the changelog.

With `--ab REV` only steps 1 and 2 run, step 2 `--rounds` times alternately with the code of
git revision REV (a temporary worktree, compiled) and the working tree's: the rebuild rate A/B
in one run, on the same changelog.

    python bench/worker_state_bench.py --calls 1000000 --ab HEAD --rounds 3

With `--engine faust` step 2 is skipped: the Faust worker's own recovery rebuilds its table
stores in step 3 (its log says how many records it applied).

Then the RSS each remembered call adds: the difference of the worker's RSS between the two
sizes, over the difference in calls.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.chaos import free_ports  # noqa: E402
from pipeline.config import compression  # noqa: E402
from pipeline.core.correlate import Correlator, make_held  # noqa: E402
from pipeline.core.events import parse_event  # noqa: E402
from pipeline.core.model import Source  # noqa: E402
from pipeline.core.partitioning import partition_for  # noqa: E402
from pipeline.kafka.broker import LocalKafka  # noqa: E402
from pipeline.kafka.topics import TOPIC_CHANGELOG, ensure_topics  # noqa: E402
from pipeline.state.codec import encode_state  # noqa: E402
from pipeline.state.restore import catch_up_apart  # noqa: E402
from pipeline.stream.batch import OWN_TOPICS  # noqa: E402
from pipeline.stream.progress import (  # noqa: E402
    WORKER_GROUP,
    committed_offsets,
    committed_with_metadata,
)

PARTITIONS = 8
TEMPLATE_ID = "bench-0000000000"
TEMPLATE_SOURCE = b"14155550100"
TEMPLATE_DESTINATION = b"442071234567"
TEMPLATE_MICROS = b"617855"  # the template's events' microseconds


def raw_events(call_id: str, at: datetime) -> list[bytes]:
    common = {"gateway": "gw1", "direction": "outbound", "account": "ACC-1001"}
    start = {"source": "+14155550100", "destination": "+442071234567", "trunk": "TRK-US-1"}
    end = {"disconnect_code": 200, "disconnect_reason": "OK"}
    end["disconnect_initiator"] = "origination"
    out = []
    for j, (kind, extra) in enumerate((("start", start), ("connect", {}), ("end", end))):
        ts = (at + timedelta(seconds=10 * j)).isoformat(timespec="microseconds")
        ts = ts.replace("+00:00", "Z")
        out.append(orjson.dumps({"event": kind, "id": call_id, "ts": ts, **common, **extra}))
    return out


def template_state(at: datetime) -> bytes:
    """The encoded state of one settled call, its id `TEMPLATE_ID` (same length as all)."""
    at = at.replace(microsecond=int(TEMPLATE_MICROS))
    correlator = Correlator({})
    topics = ("sip.call.start", "sip.call.connect", "sip.call.end")
    for n, (raw, topic) in enumerate(zip(raw_events(TEMPLATE_ID, at), topics, strict=True)):
        correlator.process(make_held(parse_event(raw), raw, Source(topic, 0, n)), 0)
    return encode_state(correlator.states[TEMPLATE_ID])


def varied(state: bytes, rng: random.Random) -> bytes:
    """The template's state with its own numbers and event times, so that the changelog
    compresses as real calls do, not as a million copies of one."""
    digits = f"{rng.randrange(10**10):010d}".encode()
    micros = f"{rng.randrange(10**6):06d}".encode()
    return (
        state.replace(TEMPLATE_SOURCE, TEMPLATE_SOURCE[:1] + digits)
        .replace(TEMPLATE_DESTINATION, TEMPLATE_DESTINATION[:2] + digits[::-1])
        .replace(TEMPLATE_MICROS, micros)
    )


async def fill(bootstrap: str, calls: int, input_offset: int = 0) -> float:
    started = time.monotonic()
    template = template_state(datetime.now(UTC) - timedelta(hours=2))
    old = TEMPLATE_ID.encode()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=20,
        max_batch_size=1 << 20,
        compression_type=compression(),  # as the workers write it
    )
    await producer.start()
    rng = random.Random(calls)
    try:
        pending = []
        for i in range(calls):
            call_id = f"bench-{i:010d}"
            key = call_id.encode()
            value = varied(template.replace(old, key), rng)
            p = partition_for(call_id, PARTITIONS)
            pending.append(await producer.send(TOPIC_CHANGELOG, value, key=key, partition=p))
            if len(pending) >= 50_000:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    await commit_as_a_worker(bootstrap, input_offset)
    return time.monotonic() - started


async def commit_as_a_worker(bootstrap: str, input_offset: int) -> None:
    """Commit the worker group's offsets as the workers that wrote the changelog would
    have: beside each input offset, the changelog offset their records end at. The Faust
    worker has no such mark: its input offsets must lie beyond the messages the states
    name as their outputs' triggers (the template's: offsets 0-2), or every state's output
    would be in doubt and sent again."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=WORKER_GROUP, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [TopicPartition(TOPIC_CHANGELOG, p) for p in range(PARTITIONS)]
        ends = await consumer.end_offsets(tps)
        commits = {
            TopicPartition(topic, tp.partition): (input_offset, str(end))
            for tp, end in ends.items()
            for topic in OWN_TOPICS
        }
        consumer.assign(list(commits))
        await consumer.commit(commits)
    finally:
        await consumer.stop()


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def rebuild(bootstrap: str, root: Path) -> tuple[int, float, int]:
    """All partitions' stores built from the changelog as a worker new to the host builds
    them: each in a process of its own, one per core (`catch_up_apart`)."""
    from pipeline.config import deadlines

    commits = asyncio.run(committed_with_metadata(bootstrap, WORKER_GROUP))
    started = time.monotonic()
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(os.cpu_count(), mp_context=context) as pool:
        done = list(
            pool.map(
                catch_up_apart,
                *zip(
                    *[
                        (bootstrap, root, p, PARTITIONS, deadlines(), commits, OWN_TOPICS)
                        for p in range(PARTITIONS)
                    ],
                    strict=True,
                ),
            )
        )
    seconds = time.monotonic() - started
    return sum(d.applied for d in done), seconds, du(root)


class Feeder(threading.Thread):
    """New calls at `rate` calls/s, timestamped now, until stopped."""

    def __init__(self, bootstrap: str, rate: float) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.rate = bootstrap, rate
        self.stop = threading.Event()
        self.sent = 0

    def run(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5)
        await producer.start()
        topics = ("sip.call.start", "sip.call.connect", "sip.call.end")
        try:
            started = time.monotonic()
            while not self.stop.is_set():
                due = int((time.monotonic() - started) * self.rate)
                while self.sent < due:
                    call_id = f"live-{self.sent:010d}"
                    at = datetime.now(UTC) - timedelta(seconds=30)
                    for raw, topic in zip(raw_events(call_id, at), topics, strict=True):
                        await producer.send(topic, raw, key=call_id.encode())
                    self.sent += 1
                await asyncio.sleep(0.05)
        finally:
            await producer.stop()


def rss(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in bytes."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024


def committed_total(bootstrap: str) -> int:
    return sum(asyncio.run(committed_offsets(bootstrap, WORKER_GROUP)).values())


def launch(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`cdrpipe worker` of the engine `env` names (`CDRPIPE_WORKER_ENGINE`)."""
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "worker", "--name", "bench-worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(log, "ab"),  # noqa: SIM115
        cwd=tempfile.gettempdir(),
    )


def wait_commit_beyond(bootstrap: str, before: int, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if committed_total(bootstrap) > before:
                return time.monotonic() - started
        except Exception:
            pass
        time.sleep(0.1)
    return float("nan")


RECOVERED = re.compile(r"partition (\d+): (rebuilt from|caught up with) (\d+) changelog records")
TABLE_RECOVERED = re.compile(
    r"table stores: (\d+) changelog records recovered, unusable stores wiped: (.*)"
)


def recovered(log: Path, since: int) -> tuple[int, int]:
    """(rebuilt records, caught-up records) the worker logged after byte `since`."""
    text = log.read_bytes()[since:].decode(errors="replace")
    rebuilt = caught = 0
    for m in TABLE_RECOVERED.finditer(text):  # the Faust worker: one line per assignment
        if m.group(2).strip() == "none" and since > 0:
            caught = max(caught, int(m.group(1)))
        else:
            rebuilt = max(rebuilt, int(m.group(1)))
    for m in RECOVERED.finditer(text):
        if m.group(2) == "rebuilt from":
            rebuilt += int(m.group(3))
        else:
            caught += int(m.group(3))
    return rebuilt, caught


REBUILD_SIDE = """
import sys
from pathlib import Path
import orjson
sys.path.insert(0, sys.argv[3])
from worker_state_bench import du, rebuild
applied, seconds, disk = rebuild(sys.argv[1], Path(sys.argv[2]))
print(orjson.dumps({"states_per_s": round(applied / seconds), "seconds": round(seconds, 2),
                    "store_bytes_per_call": round(disk / applied, 1)}).decode())
"""


def rebuild_ab(calls: int, base_rev: str, rounds: int, tmp: Path) -> None:
    """Step 2 alternately with the code of `base_rev` and the working tree's, on one fill."""
    from ab import base_worktree, run_side

    port, controller = free_ports(2)
    kafka = LocalKafka(data_dir=tmp / "kafka", port=port, controller_port=controller)
    kafka.start()
    try:
        ensure_topics(kafka.bootstrap, PARTITIONS)
        asyncio.run(fill(kafka.bootstrap, calls))
        with base_worktree(base_rev, tmp, compiled=True) as base:
            print(f"rebuild of {calls:,} states: {base_rev} (base) vs the working tree (new)")
            for n in range(1, rounds + 1):
                for name, code in (("base", base), ("new", ROOT)):
                    stores = tmp / f"stores-{name}-{n}"
                    argv = [sys.executable, "-c", REBUILD_SIDE, kafka.bootstrap, str(stores)]
                    out = run_side(code, [*argv, str(code / "bench")], tmp, pure=False)
                    print(f"round {n}, {name}: {out}", flush=True)
                    shutil.rmtree(stores, ignore_errors=True)
    finally:
        kafka.stop(timeout=30)


def measure(calls: int, rate: float, tmp: Path, engine: str) -> dict[str, float]:
    port, controller = free_ports(2)
    kafka = LocalKafka(data_dir=tmp / "kafka", port=port, controller_port=controller)
    kafka.start()
    out: dict[str, float] = {"calls": calls}
    feeder = None
    worker = None
    try:
        ensure_topics(kafka.bootstrap, PARTITIONS)
        out["fill_s"] = asyncio.run(fill(kafka.bootstrap, calls, 0 if engine == "batch" else 3))
        if engine == "batch":
            applied, seconds, disk = rebuild(kafka.bootstrap, tmp / "new-host")
            out["rebuild_states_per_s"] = applied / seconds
            out["store_bytes_per_call"] = disk / calls
        env = dict(os.environ)
        env |= {
            "CDRPIPE_KAFKA": kafka.bootstrap,
            "CDRPIPE_PARTITIONS": str(PARTITIONS),
            "CDRPIPE_DATA": str(tmp / "data"),
            "CDRPIPE_LOGLEVEL": "warning" if engine == "batch" else "info",
            "CDRPIPE_WORKER_ENGINE": engine,
            "PYTHONPATH": str(ROOT),
        }
        log = tmp / "worker.log"
        feeder = Feeder(kafka.bootstrap, rate)
        feeder.start()
        filled = committed_total(kafka.bootstrap)  # what `fill` committed for the writers
        launched = time.monotonic()
        worker = launch(env, log)
        first = wait_commit_beyond(kafka.bootstrap, filled, 1800)
        out["new_host_first_commit_s"] = first
        out["new_host_rebuilt_records"] = recovered(log, 0)[0]
        if engine == "faust":
            out["rebuild_states_per_s"] = calls / first  # launch to first commit, all included
            out["store_bytes_per_call"] = du(tmp / "data") / calls
        time.sleep(20)  # steady state with the calls coming in
        out["worker_rss"], out["worker_peak_rss"] = rss(worker.pid)
        out["worker_up_s"] = time.monotonic() - launched
        mark = log.stat().st_size
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        before = committed_total(kafka.bootstrap)  # after the kill: its last commit included
        worker = launch(env, log)
        out["restart_first_commit_s"] = wait_commit_beyond(kafka.bootstrap, before, 600)
        rebuilt, caught = recovered(log, mark)
        out["restart_rebuilt_records"], out["restart_caught_up_records"] = rebuilt, caught
        time.sleep(5)
        out["restarted_rss"] = rss(worker.pid)[0]
        out["fed_calls"] = feeder.sent
    finally:
        if feeder is not None:
            feeder.stop.set()
            feeder.join(10)
        if worker is not None and worker.poll() is None:
            worker.terminate()
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
        kafka.stop(timeout=30)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--rate", type=float, default=100.0, help="new calls a second")
    parser.add_argument("--engine", choices=["batch", "faust"], default="batch")
    parser.add_argument("--ab", metavar="REV", help="only the rebuild, A/B against REV")
    parser.add_argument("--rounds", type=int, default=3, help="A/B rounds (with --ab)")
    args = parser.parse_args()
    if args.ab:
        for calls in args.calls:
            with tempfile.TemporaryDirectory(prefix="cdrpipe-wsb-") as tmp:
                rebuild_ab(calls, args.ab, args.rounds, Path(tmp))
        return
    results = []
    for calls in args.calls:
        with tempfile.TemporaryDirectory(prefix="cdrpipe-wsb-") as tmp:
            result = measure(calls, args.rate, Path(tmp), args.engine)
        print(orjson.dumps(result).decode(), flush=True)
        results.append(result)
    for a, b in zip(results, results[1:], strict=False):
        per_call = (b["worker_rss"] - a["worker_rss"]) / (b["calls"] - a["calls"])
        print(f"RSS per remembered call, {a['calls']:.0f} -> {b['calls']:.0f}: {per_call:.1f} B")


if __name__ == "__main__":
    main()
