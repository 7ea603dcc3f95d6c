"""Gateways whose Kafka client does not partition as Java's does: librdkafka's default
(CRC32 of the key, produced here by the real clients: confluent-kafka and kcat), Sarama's
FNV-1a, and a mix
where a call's start, connect and end each come from another client. On the real broker,
with two workers: every start first, then one worker SIGKILLed (the other takes everything
over), then half the connects and ends, the worker started again, then the rest. The store
holds exactly replay's CDRs and the DLQ exactly replay's dead letters."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipeline.chaos import read_dlq
from pipeline.core.partitioning import crc32_partition
from pipeline.demo import Pipeline
from pipeline.kafka.topics import TOPIC_REPARTITION
from pipeline.simulate import produce
from pipeline.stream.progress import end_offsets

from .conftest import PARTITIONS, dump_store
from .test_stream import CONFIG, assert_same_cdrs, reordered, run_replay

MIXED = {"sip.call.start": "crc32", "sip.call.connect": "fnv1a", "sip.call.end": "murmur2"}


def starts_first(calls: int, seed: int) -> SimpleNamespace:
    """The simulator's calls, every start (and malformed message) before any connect or end."""
    sim = reordered(calls, seed, malformed=0.01)
    rest = ("sip.call.connect", "sip.call.end")
    ordered = sorted(sim.messages, key=lambda m: m.topic in rest)  # stable
    return SimpleNamespace(messages=ordered)


def produce_with_librdkafka(messages, bootstrap: str) -> None:
    """Produce with confluent-kafka and librdkafka's default partitioner, checking that
    every keyed message landed where `crc32_partition` (the simulator's) says."""
    from confluent_kafka import Producer

    landed: list[tuple[bytes, int]] = []

    def delivered(err, msg) -> None:
        assert err is None, err
        landed.append((msg.key(), msg.partition()))

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all"})
    for m in messages:
        while True:
            try:
                producer.produce(m.topic, m.value, key=m.key, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    assert producer.flush(60) == 0
    assert len(landed) == len(messages)
    assert all(p == crc32_partition(k, PARTITIONS) for k, p in landed if k)


def produce_with_kcat(messages, bootstrap: str, tmp_path: Path) -> None:
    """Produce with kcat and its default partitioner, a topic at a time (each topic's messages
    in their order), one "key<TAB>value" line a message."""
    kcat = shutil.which("kcat")
    if kcat is None:
        pytest.fail("kcat not found: these tests need Debian's kcat (apt-get install -y kcat)")
    for topic in dict.fromkeys(m.topic for m in messages):
        lines = tmp_path / "kcat-input"
        lines.write_bytes(
            b"".join(m.key + b"\t" + m.value + b"\n" for m in messages if m.topic == topic)
        )
        subprocess.run(
            [
                kcat,
                "-P",
                "-b",
                bootstrap,
                "-t",
                topic,
                "-K",
                "\t",
                "-X",
                "acks=all",
                "-l",
                str(lines),
            ],
            check=True,
            timeout=120,
        )


def send(messages, bootstrap: str, partitioner, tmp_path: Path) -> None:
    if partitioner == "librdkafka":
        produce_with_librdkafka(messages, bootstrap)
    elif partitioner == "kcat":
        produce_with_kcat(messages, bootstrap, tmp_path)
    else:
        asyncio.run(produce(messages, bootstrap, partitioner=partitioner))


def dead_letters(bootstrap: str) -> Counter[str]:
    """Dead letters by kind, each message once (a worker that took over a partition re-sends
    those in doubt; a repeat has the same source and reason)."""
    seen = {}
    for m in read_dlq(bootstrap):
        h = dict(m.headers)
        where = (h["dlq.topic"], h["dlq.partition"], h["dlq.offset"], h["dlq.reason"], m.value)
        seen[where] = h["dlq.kind"].decode()
    return Counter(seen.values())


@pytest.mark.parametrize(
    ("engine", "partitioner", "state"),
    [
        ("batch", "librdkafka", "disk"),
        ("batch", "kcat", "disk"),
        ("batch", "fnv1a", "disk"),
        ("batch", "crc32", "memory"),
        ("batch", MIXED, "disk"),
        ("faust", MIXED, "disk"),
    ],
    ids=[
        "batch-librdkafka",
        "batch-kcat",
        "batch-fnv1a",
        "batch-crc32-states-in-memory",
        "batch-mixed",
        "faust-mixed",
    ],
)
def test_any_partitioner_gives_the_replay_cdrs(
    broker, tmp_path, monkeypatch, engine, partitioner, state
):
    monkeypatch.setenv("CDRPIPE_WORKER_ENGINE", engine)
    monkeypatch.setenv("CDRPIPE_WORKER_STATE", state)
    sim = starts_first(10_000, 51)
    messages = sim.messages
    starts = sum(1 for m in messages if m.topic == "sip.call.start")
    half = (len(messages) + starts) // 2
    store = f"chdb://{tmp_path / 'stream-store'}"
    env = {"CDRPIPE_DATA": str(tmp_path / "data"), "CDRPIPE_CONFIG": str(CONFIG)}
    pipeline = Pipeline(broker.bootstrap, store, tmp_path / "logs", 2, env)
    pipeline.start()
    try:
        send(messages[:starts], broker.bootstrap, partitioner, tmp_path)
        pipeline.wait_stored(timeout_s=300)
        pipeline.stop("worker1", sig=signal.SIGKILL)
        send(messages[starts:half], broker.bootstrap, partitioner, tmp_path)
        pipeline.wait_stored(timeout_s=300)  # worker0 alone, after worker1's session ended
        pipeline.start_worker(1)
        send(messages[half:], broker.bootstrap, partitioner, tmp_path)
        lags = pipeline.wait_stored(timeout_s=300, settle_s=4)
    finally:
        pipeline.stop()
    assert all(v == 0 for v in lags.values()), lags
    replay_store, summary = run_replay(tmp_path, sim)
    assert_same_cdrs(dump_store(store), dump_store(replay_store))
    assert dead_letters(broker.bootstrap) == Counter(summary.dlq_by_kind)
    forwarded = asyncio.run(end_offsets(broker.bootstrap, (TOPIC_REPARTITION,)))
    assert sum(forwarded.values()) > len(sim.messages) // 4  # most came off their partition
