"""The local Kafka broker really runs: topics, produce/consume, stop, restart, data kept.

Uses its own free ports and a temporary data dir (but the shared jar cache), so it neither
needs nor disturbs a developer's broker on 9092.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from pipeline.kafka.broker import LocalKafka
from pipeline.kafka.topics import (
    ALL_TOPICS,
    CO_PARTITIONED,
    TOPIC_START,
    TopicPartitionMismatch,
    delete_topics,
    ensure_topics,
)
from pipeline.stream.runtime import wait_for_broker
from tests.integration.conftest import free_ports

PARTITIONS = 3
GROUP = "test-broker"
KEY = b"gw1-call-0001"
VALUE = b'{"event":"start","id":"gw1-call-0001"}'
T = TypeVar("T")


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """asyncio.run with a deadline, so a stuck client fails the test instead of hanging it."""
    return asyncio.run(asyncio.wait_for(coro, timeout=30))


@pytest.fixture
def kafka(tmp_path: Path) -> Iterator[LocalKafka]:
    port, controller_port = free_ports(2)
    broker = LocalKafka(data_dir=tmp_path / "kafka", port=port, controller_port=controller_port)
    try:
        yield broker
    finally:
        broker.stop(timeout=10)


async def _produce(bootstrap: str) -> tuple[int, int]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        meta = await producer.send_and_wait(TOPIC_START, VALUE, key=KEY)
    finally:
        await producer.stop()
    return meta.partition, meta.offset


async def _consume_in_group(bootstrap: str) -> ConsumerRecord[bytes, bytes]:
    """Read via a consumer group and commit, exercising __consumer_offsets (RF 1)."""
    consumer = AIOKafkaConsumer(
        TOPIC_START,
        bootstrap_servers=bootstrap,
        group_id=GROUP,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), timeout=20)
        await consumer.commit()
    finally:
        await consumer.stop()
    return record


async def _read_back(
    bootstrap: str, partition: int, offset: int
) -> tuple[bytes | None, int | None]:
    """Record value at ``offset`` (no group) and the group's committed offset."""
    tp = TopicPartition(TOPIC_START, partition)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=GROUP, enable_auto_commit=False
    )
    await consumer.start()
    try:
        committed = await consumer.committed(tp)
        consumer.assign([tp])
        consumer.seek(tp, offset)
        record = await asyncio.wait_for(consumer.getone(), timeout=20)
    finally:
        await consumer.stop()
    return record.value, committed


def test_broker_lifecycle(kafka: LocalKafka) -> None:
    status = kafka.start()
    assert status.running and status.listening and status.formatted
    assert kafka.pid_file.is_file()
    meta = kafka.storage_dir / "meta.properties"
    meta_before = (meta.read_text(), meta.stat().st_mtime_ns)

    counts = ensure_topics(kafka.bootstrap, partitions=PARTITIONS)
    assert counts == {topic: PARTITIONS for topic in ALL_TOPICS}
    assert ensure_topics(kafka.bootstrap, partitions=PARTITIONS) == counts  # idempotent
    with pytest.raises(TopicPartitionMismatch, match="sip.call.start=3"):
        ensure_topics(kafka.bootstrap, partitions=PARTITIONS + 1)

    partition, offset = _run(_produce(kafka.bootstrap))
    record = _run(_consume_in_group(kafka.bootstrap))
    assert (record.key, record.value) == (KEY, VALUE)
    assert (record.partition, record.offset) == (partition, offset)

    assert kafka.stop() is True
    assert not kafka.status().running
    assert not kafka.pid_file.exists()
    assert kafka.stop() is False  # stopping a stopped broker is a no-op

    # Restart on the same data dir: no re-format, topics, data and committed offsets kept.
    assert kafka.start().running
    assert (meta.read_text(), meta.stat().st_mtime_ns) == meta_before
    assert ensure_topics(kafka.bootstrap, partitions=PARTITIONS) == counts
    value, committed = _run(_read_back(kafka.bootstrap, partition, offset))
    assert value == VALUE
    assert committed == offset + 1

    # the topics partitioned by call (the inputs and the repartition topic) go together
    assert delete_topics(kafka.bootstrap, CO_PARTITIONED) == list(CO_PARTITIONED)
    assert ensure_topics(kafka.bootstrap, partitions=PARTITIONS + 1)[TOPIC_START] == PARTITIONS + 1

    assert kafka.stop() is True
    log_text = kafka.log_file.read_text()
    assert "Kafka Server started" in log_text or "started" in log_text
    assert kafka.console_file.read_text().strip() == ""  # everything went to log4j files


def test_a_worker_waits_for_a_broker_that_is_down(kafka: LocalKafka) -> None:
    """`wait_for_broker`, which both worker engines run first: a worker started during a
    broker restart waits for the broker instead of exiting; it gives up after its wait."""

    async def scenario() -> float:
        waiting = asyncio.create_task(wait_for_broker(kafka.bootstrap, wait_s=180))
        await asyncio.sleep(3)
        assert not waiting.done()  # still waiting: nothing listens yet
        started = time.monotonic()
        await asyncio.to_thread(kafka.start)
        await asyncio.wait_for(waiting, timeout=60)
        return time.monotonic() - started

    assert _run(scenario()) < 60
    (port,) = free_ports(1)  # nothing listens there
    started = time.monotonic()
    with pytest.raises((KafkaError, OSError)):
        _run(wait_for_broker(f"127.0.0.1:{port}", wait_s=2))
    assert 1 < time.monotonic() - started < 15
