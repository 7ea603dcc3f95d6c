"""What a batch worker's cycle takes from its consumer: an even share of every owned
topic-partition, start, connect and end in that order, and a fetch size per partition that
lets one response hold all of them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline.kafka.topics import WORKER_TOPICS

__all__ = ["FETCH_MAX_BYTES", "fetch_evenly", "in_topic_order", "partition_fetch_bytes"]

FETCH_MAX_BYTES = 32 * 1024 * 1024  # one fetch response, all partitions together


def partition_fetch_bytes(partitions: int) -> int:
    """The most one fetch takes of one topic-partition: a fetch response then holds every
    topic-partition a worker can own (each topic's `partitions`).

    The broker fills a response partition by partition, in request order, which aiokafka
    groups by topic. With 4 MB per partition, a 32 MB response held 8 partitions of one
    topic: a worker started on a backlog spent its first 60,000-100,000 messages on starts,
    connects or ends alone and emitted its first CDR seconds later (`bench/startup_bench.py`).
    """
    per_partition = FETCH_MAX_BYTES // (len(WORKER_TOPICS) * max(1, partitions))
    return max(256 * 1024, min(4 * 1024 * 1024, per_partition))


async def fetch_evenly(
    consumer: AIOKafkaConsumer,
    max_records: int,
    timeout_ms: int,
    rebalances: Callable[[], int] = lambda: 0,
) -> dict[TopicPartition, list[Any]]:
    """Up to `max_records` fetched messages, at most an equal share of each owned
    topic-partition first, then any others in the order aiokafka keeps them; waits up to
    `timeout_ms` for the first. Returned as start, connect, end, then ticks.

    aiokafka hands out its buffered messages partition after partition, so on a backlog a
    plain `getmany` filled whole cycles with one topic: starts without their ends, no CDR,
    and each call written to the changelog once per topic instead of once per cycle. Even
    shares keep the three topics of a cycle at about the same time.

    Only the first `getmany` waits; the others take what is buffered, unless a rebalance
    begins (`rebalances()`, counted by the listener, changes): messages of the new
    assignment are then put back (seek) rather than joined to those of the old one.
    """
    owned = consumer.assignment()
    # Before the first assignment the shares are unknown: one message, then share out.
    first = max(1, max_records // len(owned)) if owned else 1
    batch = await consumer.getmany(timeout_ms=timeout_ms, max_records=first)
    taken = sum(map(len, batch.values()))
    if taken < first:  # everything buffered: no backlog to share out
        return in_topic_order(batch)
    generation = rebalances()
    owned = sorted(consumer.assignment())
    share = max(1, max_records // max(1, len(owned)))

    async def more(*tps: TopicPartition, limit: int) -> int:
        records = await consumer.getmany(*tps, max_records=limit)
        if rebalances() != generation:
            owned_now = consumer.assignment()
            for tp, got in records.items():
                if tp in owned_now:
                    consumer.seek(tp, got[0].offset)
            return -1
        for tp, got in records.items():
            batch.setdefault(tp, []).extend(got)
        return sum(map(len, records.values()))

    for tp in owned:
        want = min(share - len(batch.get(tp, ())), max_records - taken)
        if want > 0:
            got = await more(tp, limit=want)
            if got < 0:
                return in_topic_order(batch)
            taken += got
    if taken < max_records:
        await more(limit=max_records - taken)
    return in_topic_order(batch)


_TOPIC_RANK = {topic: rank for rank, topic in enumerate(WORKER_TOPICS)}


def in_topic_order(batch: dict[TopicPartition, list[Any]]) -> dict[TopicPartition, list[Any]]:
    """A call's events in the order they happen (fewer corrected CDR versions in a cycle)."""
    return dict(
        sorted(batch.items(), key=lambda item: (_TOPIC_RANK.get(item[0].topic, 9), item[0]))
    )
