"""Streaming throughput and latency on the real local broker.

    python bench/stream_bench.py --calls 100000 --workers 1 2 --engines batch faust
    python bench/stream_bench.py --workers 2 --states disk memory --rounds 2

For each worker engine, batch worker state store (`--states`: local RocksDB stores or memory;
alternating `--rounds` times, for an A/B of one run) and worker count, in one run and on one
fresh broker per measurement, after a warm-up pass of `--warmup-calls` calls through the
pipeline (see `warm_up`):
1. the raw aiokafka consume rate of the same input topics (the ceiling; read last, with the
   pipeline stopped),
2. worker(s) + sink draining a backlog: events/s from the moment the backlog is produced
   (into the running pipeline, every worker assigned: `backlog_into_running_pipeline`) until
   the workers committed all of it,
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

from pipeline.config import COMPRESSIONS  # noqa: E402
from pipeline.demo import Pipeline
from pipeline.kafka.broker import LocalKafka
from pipeline.kafka.topics import INPUT_TOPICS, TOPIC_CDR, TOPIC_REPARTITION, ensure_topics
from pipeline.simulate import SimConfig, generate, produce
from pipeline.store.client import connect
from pipeline.stream.progress import WORKER_GROUP, end_offsets, group_lag

CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "config"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def raw_consume_rate(bootstrap: str, total: int) -> float:
    consumer = AIOKafkaConsumer(
        *INPUT_TOPICS,
        bootstrap_servers=bootstrap,
        group_id=f"raw-{time.time()}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_poll_records=5000,
    )
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


async def group_ready(
    bootstrap: str, members: int | None, timeout_s: float = 120, group: str = WORKER_GROUP
) -> None:
    """Wait until `group` is stable with `members` members (all assigned; None: any)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                responses = await admin.describe_consumer_groups([group])
            except KafkaError:
                responses = []
            # DescribeGroups: (error, group id, state, protocol type, protocol, members, ...)
            groups = [g for r in responses for g in r.groups]
            if any(
                g[2] == "Stable" and g[5] and (members is None or len(g[5]) == members)
                for g in groups
            ):
                return
            await asyncio.sleep(0.1)
        raise TimeoutError(f"group {group} did not become stable with {members} members")
    finally:
        await admin.close()


async def timed_drain(
    bootstrap: str,
    base: dict[TopicPartition, int],
    ends: dict[TopicPartition, int],
    pipeline: Pipeline,
    warm: float = 0.0,
    on_start: Callable[[], object] | None = None,
) -> tuple[int, float]:
    """(events, seconds) from now - or, with `warm` > 0, from the moment that fraction of the
    backlog between `base` and `ends` is committed; `on_start` is called then - until the
    workers committed all of it.

    Only the group's commits are polled (the end offsets are fixed), every 0.1 s with one
    admin client (0.5 ms of CPU per poll, against 6 ms for `group_lag`, which opens a
    consumer and an admin client each time)."""
    total = sum(end - base.get(tp, 0) for tp, end in ends.items())
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    start: tuple[int, float] | None = None
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
            if start is None and done >= total * warm:
                start = (done, now)
                if on_start is not None:
                    on_start()
            # Messages forwarded to their call's partition are processed from the repartition
            # topic: the drain ends when that is consumed too.
            if (
                start is not None
                and done == total
                and await group_lag(bootstrap, WORKER_GROUP, (TOPIC_REPARTITION,)) == 0
            ):
                return total - start[0], time.perf_counter() - start[1]
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


def warm_up(kafka: LocalKafka, pipeline: Pipeline, calls: int, start: datetime) -> None:
    """Run `calls` simulated calls (older than the measured ones) through the pipeline until
    stored, then stop it. The broker's JVM compiles its produce, fetch, commit and compaction
    paths meanwhile, as a long-running broker has done."""
    if calls <= 0:
        return
    sim = generate(
        SimConfig(
            calls=calls,
            seed=7,
            config_dir=str(CONFIG),
            start=start - timedelta(hours=1),
            reorder=0.02,
            duplicate=0.02,
        )
    )
    asyncio.run(produce(sim.messages, kafka.bootstrap))
    pipeline.start()
    try:
        pipeline.wait_stored(timeout_s=600)
    finally:
        pipeline.stop()


def backlog_into_running_pipeline(
    kafka: LocalKafka,
    pipeline: Pipeline,
    workers: int,
    sim_config: SimConfig,
    partitioner: str = "murmur2",
) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
    """Start the pipeline, wait until every worker has its partitions, then produce the
    backlog as fast as possible; returns the input end offsets before and after it.

    So every worker is busy from the first moment of the timed drain: started on a ready
    backlog, the first worker to join took all partitions alone for seconds (the local
    broker forms a group at once), and the figures drifted with that race."""
    pipeline.start()
    asyncio.run(group_ready(kafka.bootstrap, workers))
    base = asyncio.run(end_offsets(kafka.bootstrap, INPUT_TOPICS))
    messages = generate(sim_config).messages
    asyncio.run(produce(messages, kafka.bootstrap, partitioner=partitioner))
    return base, asyncio.run(end_offsets(kafka.bootstrap, INPUT_TOPICS))


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
    state: str,
    workers: int,
    calls: int,
    latency_calls: int,
    rates: list[float],
    tmp: Path,
    warmup_calls: int,
    partitioner: str = "murmur2",
    aligned: bool = True,
    compression: str = "zstd",
) -> dict:
    port, cport = free_port(), free_port()
    tag = f"{engine}-{state}-{workers}-{time.monotonic_ns()}"
    kafka = LocalKafka(data_dir=tmp / f"kafka-{tag}", port=port, controller_port=cport)
    kafka.start()
    result: dict = {"engine": engine if engine == "faust" else f"{engine} ({state})"}
    if partitioner != "murmur2":
        result["engine"] += f", {partitioner} producers"
    if not aligned:
        result["engine"] += ", inputs not time-aligned"
    if compression != "zstd":
        result["engine"] += f", outputs compressed: {compression}"
    result["workers"] = workers
    try:
        ensure_topics(kafka.bootstrap, 8)
        start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=2)
        store = f"chdb://{tmp / f'store-{tag}'}"
        pipeline = Pipeline(
            kafka.bootstrap,
            store,
            tmp / f"logs-{tag}",
            workers,
            {
                "CDRPIPE_DATA": str(tmp / f"data-{tag}"),
                "CDRPIPE_WORKER_ENGINE": engine,
                "CDRPIPE_WORKER_STATE": state,
                "CDRPIPE_TIME_ALIGNED": "1" if aligned else "0",
                "CDRPIPE_COMPRESSION": compression,
            },
        )
        warm_up(kafka, pipeline, warmup_calls, start)
        warmup_records = sum(asyncio.run(end_offsets(kafka.bootstrap, (TOPIC_CDR,))).values())
        try:
            base, ends = backlog_into_running_pipeline(
                kafka,
                pipeline,
                workers,
                SimConfig(
                    calls=calls,
                    seed=100 + workers,
                    config_dir=str(CONFIG),
                    start=start,
                    reorder=0.02,
                    duplicate=0.02,
                ),
                partitioner,
            )
            result["events"] = sum(ends.values()) - sum(base.values())
            events, seconds = asyncio.run(timed_drain(kafka.bootstrap, base, ends, pipeline))
            result["drain"] = events / seconds
            pipeline.wait_stored(timeout_s=600)
            # CDR records the drain emitted per call: above 1, versions revised because
            # an end was processed before its connect (the consumer's order, not the calls')
            records = asyncio.run(end_offsets(kafka.bootstrap, (TOPIC_CDR,)))
            result["records_per_call"] = (sum(records.values()) - warmup_records) / calls
            paced_ends = {}
            for i, rate in enumerate(rates):
                lat = generate(
                    SimConfig(
                        calls=latency_calls,
                        seed=900 + 10 * workers + i,
                        config_dir=str(CONFIG),
                        start=datetime.now(UTC),
                        call_rate=rate / 2.6,
                    )
                )
                t0 = time.perf_counter()
                acked = asyncio.run(paced(kafka.bootstrap, lat.messages, rate))
                achieved = len(lat.messages) / (time.perf_counter() - t0)
                paced_ends[rate] = (acked, achieved)
                pipeline.wait_stored(timeout_s=600)
        finally:
            pipeline.stop()
        result["raw_consume"] = asyncio.run(raw_consume_rate(kafka.bootstrap, result["events"]))
        client = connect(store)
        try:
            result["latency"] = {}
            for rate, (acked, achieved) in paced_ends.items():
                rows = []
                for table in ("cdr_outbound", "cdr_inbound"):
                    rows += client.query(
                        f"SELECT id, toUnixTimestamp64Milli(ingested_at) FROM {table} FINAL "
                        "WHERE has({ids:Array(String)}, id)",
                        parameters={"ids": list(acked)},
                    ).result_rows
                lat_s = sorted(ms / 1000 - acked[i] for i, ms in rows)
                result["latency"][rate] = (
                    len(lat_s),
                    statistics.median(lat_s),
                    lat_s[int(len(lat_s) * 0.99) - 1],
                    achieved,
                )
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
    parser.add_argument("--states", nargs="+", default=["disk"], choices=["disk", "memory"])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--partitioners",
        nargs="+",
        default=["murmur2"],
        choices=["murmur2", "crc32", "fnv1a", "random"],
        help="the backlog producer's partitioner (not murmur2: most messages are forwarded)",
    )
    parser.add_argument(
        "--alignment",
        nargs="+",
        default=["on"],
        choices=["on", "off"],
        help="batch workers process a partition's inputs in time order (off: as fetched)",
    )
    parser.add_argument(
        "--compression",
        nargs="+",
        default=["zstd"],
        choices=list(COMPRESSIONS),
        help="how the workers compress what they produce (CDRPIPE_COMPRESSION)",
    )
    parser.add_argument("--latency-calls", type=int, default=3000)
    parser.add_argument(
        "--rate",
        type=float,
        nargs="+",
        default=[1000.0, 10000.0],
        help="paced events/s for the latency measurements",
    )
    parser.add_argument(
        "--warmup-calls",
        type=int,
        default=50_000,
        help="calls run through the pipeline (then restarted) before measuring",
    )
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cdrpipe-stream-bench-"))
    rates = " | ".join(f"p50 / p99 (s) at {r:,.0f} ev/s" for r in args.rate)
    print(
        f"| date | machine | engine | workers | events | raw aiokafka consume (ev/s) "
        f"| pipeline drain (ev/s) | ratio | CDR records per call | {rates} |"
    )
    runs = [
        (engine, state, w, partitioner, alignment == "on", compression)
        for _ in range(args.rounds)
        for engine in args.engines
        for state in (args.states if engine == "batch" else ["memory"])
        for w in args.workers
        for partitioner in args.partitioners
        for alignment in (args.alignment if engine == "batch" else ["on"])
        for compression in args.compression
    ]
    for engine, state, w, partitioner, aligned, compression in runs:
        r = measure(
            engine,
            state,
            w,
            args.calls,
            args.latency_calls,
            args.rate,
            tmp,
            args.warmup_calls,
            partitioner,
            aligned,
            compression,
        )
        lats = " | ".join(
            f"{p50:.2f} / {p99:.2f} (n={n}, sent at {achieved:,.0f}/s)"
            for n, p50, p99, achieved in r["latency"].values()
        )
        print(
            f"| {datetime.now(UTC):%Y-%m-%d} | {platform.machine()}, {os.cpu_count()} "
            f"cores | {r['engine']} | {w} | {r['events']:,} | {r['raw_consume']:,.0f} | "
            f"{r['drain']:,.0f} | {r['drain'] / r['raw_consume']:.2f} | "
            f"{r['records_per_call']:.4f} | {lats} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
