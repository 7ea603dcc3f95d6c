"""Streaming throughput and latency on the real local broker.

    python bench/stream_bench.py --calls 100000 --workers 1 2 --engines batch faust

For each worker engine and worker count, in one run and on one fresh broker per measurement,
after a warm-up pass of `--warmup-calls` calls through the pipeline (see `warm_up`):
1. the raw aiokafka consume rate of the same input topics (the ceiling),
2. worker(s) + sink draining a pre-loaded backlog: events/s from the first
   committed offset to the last, and from the moment `--warm` of it was committed (steady
   state: see `timed_drain`),
3. end-event -> queryable latency: calls produced at a steady pace to a caught-up
   pipeline; latency = the CDR row's ingested_at - the end event's send time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from pipeline.demo import Pipeline
from pipeline.kafka.broker import LocalKafka
from pipeline.kafka.topics import INPUT_TOPICS, ensure_topics
from pipeline.simulate import SimConfig, generate, produce
from pipeline.store.client import connect
from pipeline.stream.progress import WORKER_GROUP, end_offsets

CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "config"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def raw_consume_rate(bootstrap: str, total: int) -> float:
    consumer = AIOKafkaConsumer(*INPUT_TOPICS, bootstrap_servers=bootstrap,
                                group_id=f"raw-{time.time()}", auto_offset_reset="earliest",
                                enable_auto_commit=False, max_poll_records=5000)
    await consumer.start()
    seen = 0
    started = time.perf_counter()
    try:
        while seen < total:
            batch = await consumer.getmany(timeout_ms=1000, max_records=5000)
            seen += sum(len(v) for v in batch.values())
    finally:
        await consumer.stop()
    return seen / (time.perf_counter() - started)


async def timed_drain(
    bootstrap: str,
    ends: dict[TopicPartition, int],
    pipeline: Pipeline,
    warm: float,
    on_start: Callable[[], object] | None = None,
    base: dict[TopicPartition, int] | None = None,
) -> dict[str, tuple[int, float]]:
    """Time the workers committing the whole backlog: {"all": (events, seconds) from their
    first commit, "warm": (events, seconds) from the moment a `warm` fraction of the backlog
    was committed}; `on_start` is called at that moment. The backlog is what lies between
    `base` (default: the beginning) and `ends`.

    The warm figure leaves out what a long-running pipeline has already paid for: the broker
    JVM compiling its hot paths (it is started fresh for each measurement; its compiler threads
    were still busy half-way through a 770k-event drain) and the workers' first look-ups of
    each numbering plan. The backlog's end offsets are fixed, so only the group's commits are
    polled, every 0.1 s with one admin client (0.5 ms of CPU per poll, against 6 ms for
    `group_lag`, which opens a consumer and an admin client each time)."""
    base = base or {}
    total = sum(end - base.get(tp, 0) for tp, end in ends.items())
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    marks: dict[str, tuple[int, float]] = {}
    try:
        while True:
            pipeline.check_alive()
            try:
                committed = await admin.list_consumer_group_offsets(WORKER_GROUP)
            except KafkaError:
                committed = {}
            now = time.perf_counter()
            done = sum(
                max(0, min(meta.offset, ends[tp]) - base.get(tp, 0))
                for tp, meta in committed.items()
                if tp in ends and meta.offset > 0
            )
            if done > 0 and "all" not in marks:
                marks["all"] = (done, now)
            if done > total * warm and "warm" not in marks:
                marks["warm"] = (done, now)
                if on_start is not None:
                    on_start()
            if done == total:
                return {k: (total - d, now - t) for k, (d, t) in marks.items()}
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


def warm_up(kafka: LocalKafka, pipeline: Pipeline, calls: int, start: datetime) -> None:
    """Run `calls` simulated calls (older than the measured ones) through the pipeline until
    stored, then stop it. The broker's JVM compiles its produce, fetch, commit and compaction
    paths meanwhile, as a long-running broker has; the next start of the workers reads the
    warm-up's call states back, before the measured backlog's first commit."""
    if calls <= 0:
        return
    sim = generate(SimConfig(calls=calls, seed=7, config_dir=str(CONFIG),
                             start=start - timedelta(hours=1), reorder=0.02, duplicate=0.02))
    asyncio.run(produce(sim.messages, kafka.bootstrap))
    pipeline.start()
    try:
        pipeline.wait_stored(timeout_s=600)
    finally:
        pipeline.stop()


async def drain_rates(
    bootstrap: str,
    ends: dict[TopicPartition, int],
    pipeline: Pipeline,
    warm: float,
    base: dict[TopicPartition, int],
) -> dict[str, float]:
    timed = await timed_drain(bootstrap, ends, pipeline, warm, base=base)
    return {k: events / seconds if seconds > 0 else float("nan")
            for k, (events, seconds) in timed.items()}


def _stamp(ends: dict[str, float], call_id: str):
    def done(_future: object) -> None:
        ends[call_id] = time.time()

    return done


async def paced(bootstrap: str, messages, rate: float) -> dict[str, float]:
    """Send messages at `rate`/s; returns call id -> wall time its end was acknowledged."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=1)
    await producer.start()
    ends: dict[str, float] = {}
    try:
        t0 = time.perf_counter()
        for i, m in enumerate(messages):
            fut = await producer.send(m.topic, m.value, key=m.key)
            if m.topic.endswith(".end"):
                fut.add_done_callback(_stamp(ends, m.key.decode()))
            delay = t0 + (i + 1) / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        await producer.flush()
    finally:
        await producer.stop()
    return ends


def measure(
    engine: str,
    workers: int,
    calls: int,
    latency_calls: int,
    rates: list[float],
    tmp: Path,
    warm: float,
    warmup_calls: int,
) -> dict:
    port, cport = free_port(), free_port()
    tag = f"{engine}-{workers}"
    kafka = LocalKafka(data_dir=tmp / f"kafka-{tag}", port=port, controller_port=cport)
    kafka.start()
    result: dict = {"engine": engine, "workers": workers}
    try:
        ensure_topics(kafka.bootstrap, 8)
        start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=2)
        store = f"chdb://{tmp / f'store-{tag}'}"
        pipeline = Pipeline(kafka.bootstrap, store, tmp / f"logs-{tag}", workers,
                            {"CDRPIPE_DATA": str(tmp / f"data-{tag}"),
                             "CDRPIPE_WORKER_ENGINE": engine})
        warm_up(kafka, pipeline, warmup_calls, start)
        base = asyncio.run(end_offsets(kafka.bootstrap, INPUT_TOPICS))
        sim = generate(SimConfig(calls=calls, seed=100 + workers, config_dir=str(CONFIG),
                                 start=start, reorder=0.02, duplicate=0.02))
        asyncio.run(produce(sim.messages, kafka.bootstrap))
        ends = asyncio.run(end_offsets(kafka.bootstrap, INPUT_TOPICS))
        total = sum(ends.values()) - sum(base.values())
        result["events"] = total
        result["raw_consume"] = asyncio.run(raw_consume_rate(kafka.bootstrap, total))
        pipeline.start()
        try:
            result["drain"] = asyncio.run(
                drain_rates(kafka.bootstrap, ends, pipeline, warm, base)
            )
            pipeline.wait_stored(timeout_s=600)
            paced_ends = {}
            for i, rate in enumerate(rates):
                lat = generate(SimConfig(calls=latency_calls, seed=900 + 10 * workers + i,
                                         config_dir=str(CONFIG), start=datetime.now(UTC),
                                         call_rate=rate / 2.6))
                t0 = time.perf_counter()
                ends = asyncio.run(paced(kafka.bootstrap, lat.messages, rate))
                achieved = len(lat.messages) / (time.perf_counter() - t0)
                paced_ends[rate] = (ends, achieved)
                pipeline.wait_stored(timeout_s=600)
        finally:
            pipeline.stop()
        client = connect(store)
        try:
            result["latency"] = {}
            for rate, (ends, achieved) in paced_ends.items():
                rows = []
                for table in ("cdr_outbound", "cdr_inbound"):
                    rows += client.query(
                        f"SELECT id, toUnixTimestamp64Milli(ingested_at) FROM {table} FINAL "
                        "WHERE has({ids:Array(String)}, id)", parameters={"ids": list(ends)},
                    ).result_rows
                lat_s = sorted(ms / 1000 - ends[i] for i, ms in rows)
                result["latency"][rate] = (len(lat_s), statistics.median(lat_s),
                                           lat_s[int(len(lat_s) * 0.99) - 1], achieved)
        finally:
            client.close()
    finally:
        kafka.stop()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--engines", nargs="+", default=["batch"], choices=["batch", "faust"])
    parser.add_argument("--latency-calls", type=int, default=3000)
    parser.add_argument("--rate", type=float, nargs="+", default=[1000.0, 10000.0],
                        help="paced events/s for the latency measurements")
    parser.add_argument("--warmup-calls", type=int, default=50_000,
                        help="calls run through the pipeline (then restarted) before measuring")
    parser.add_argument("--warm", type=float, default=0.5,
                        help="fraction of the backlog processed before the drain is timed")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cdrpipe-stream-bench-"))
    rates = " | ".join(f"p50 / p99 (s) at {r:,.0f} ev/s" for r in args.rate)
    print(f"| date | machine | engine | workers | events | raw aiokafka consume (ev/s) "
          f"| drain, whole (ev/s) | drain after {args.warm:.0%} (ev/s) | ratio | {rates} |")
    for engine in args.engines:
        for w in args.workers:
            r = measure(engine, w, args.calls, args.latency_calls, args.rate, tmp, args.warm,
                        args.warmup_calls)
            lats = " | ".join(
                f"{p50:.2f} / {p99:.2f} (n={n}, sent at {achieved:,.0f}/s)"
                for n, p50, p99, achieved in r["latency"].values()
            )
            print(f"| {datetime.now(UTC):%Y-%m-%d} | {platform.machine()}, {os.cpu_count()} "
                  f"cores | {engine} | {w} | {r['events']:,} | {r['raw_consume']:,.0f} | "
                  f"{r['drain']['all']:,.0f} | {r['drain']['warm']:,.0f} | "
                  f"{r['drain']['warm'] / r['raw_consume']:.2f} | {lats} |",
                  flush=True)

if __name__ == "__main__":
    main()
