"""The batch worker reads call states back from the changelog topic of the real broker."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaProducer

from pipeline.core.correlate import CallState
from pipeline.kafka.topics import TOPIC_CHANGELOG
from pipeline.state.changelog import state_to_json
from pipeline.stream.batch import BatchWorker
from pipeline.stream.memory_states import ChangelogStates

from .conftest import PARTITIONS


async def write_changelog(bootstrap: str, records: list[tuple[str, int, bytes | None]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for key, partition, value in records:
            await producer.send(TOPIC_CHANGELOG, value, key=key.encode(), partition=partition)
        await producer.flush()
    finally:
        await producer.stop()


def test_restore_reads_every_partition_from_its_beginning(broker):
    """Newest value per call wins, tombstones forget, other partitions are not read."""
    records: list[tuple[str, int, bytes | None]] = []
    for p in range(PARTITIONS):
        for i in range(300):
            records.append((f"p{p}-c{i}", p, state_to_json(CallState(f"p{p}-c{i}"))))
        for i in range(100):  # newer versions of some, forgetting of others
            records.append((f"p{p}-c{i}", p, state_to_json(CallState(f"p{p}-c{i}", revision=2))))
            records.append((f"p{p}-c{100 + i}", p, None))
    asyncio.run(write_changelog(broker.bootstrap, records))

    async def restore() -> BatchWorker:
        worker = BatchWorker(bootstrap=broker.bootstrap, partitions=PARTITIONS)
        assert isinstance(worker.states, ChangelogStates)
        count = await worker.recovery.restore(worker.states, {1, 2, 5})
        assert count == 3 * 500  # every record of the three partitions, none of the others
        return worker

    worker = asyncio.run(restore())
    states = worker.states
    assert len(states) == 3 * 200
    assert {k.split("-")[0] for k in states} == {"p1", "p2", "p5"}
    assert states["p2-c5"] == CallState("p2-c5", revision=2)
    assert states["p5-c250"] == CallState("p5-c250")
    assert "p1-c150" not in states
    assert states.partition_of["p5-c0"] == 5
    assert states.changes() == []  # what was read back is not written again
