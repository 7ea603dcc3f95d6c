"""How far consumer groups are behind: the demo, tests and benchmarks wait on this.

A group is caught up when its committed offsets equal the topics' end offsets.
Workers and the sink commit only after their effects are durable, so "caught
up" means "everything produced so far is in the store".
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

WORKER_GROUP = "cdrpipe"  # the Faust app id
SINK_GROUP = "cdrpipe-sink"


async def end_offsets(bootstrap: str, topics: tuple[str, ...]) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [
            TopicPartition(t, p)
            for t in topics
            for p in sorted(consumer.partitions_for_topic(t) or await _partitions(consumer, t))
        ]
        return await consumer.end_offsets(tps)
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    await consumer._client.force_metadata_update()  # noqa: SLF001 - aiokafka has no public call
    return consumer.partitions_for_topic(topic) or set()


async def committed_offsets(
    bootstrap: str, group: str, *, strict: bool = False
) -> dict[tuple[str, int], int]:
    """(topic, partition) -> the group's committed offset (the next one to process);
    partitions without a commit are absent. When the group coordinator cannot answer
    (no group yet, or a broker just restarted) this is {} — unless `strict`, which raises:
    a worker must never take "unknown" for "nothing committed"."""
    commits = await committed_with_metadata(bootstrap, group, strict=strict)
    return {tp: offset for tp, (offset, _) in commits.items()}


async def committed_with_metadata(
    bootstrap: str, group: str, *, strict: bool = False
) -> dict[tuple[str, int], tuple[int, str]]:
    """As `committed_offsets`, with the metadata string committed beside each offset."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
    except KafkaError:
        if strict:
            raise
        committed = {}
    finally:
        await admin.close()
    return {
        (tp.topic, tp.partition): (m.offset, m.metadata or "")
        for tp, m in committed.items()
        if m.offset >= 0
    }


async def group_lag(bootstrap: str, group: str, topics: tuple[str, ...]) -> int:
    """Messages in `topics` not yet committed by `group` (end offset - committed)."""
    ends = await end_offsets(bootstrap, topics)
    committed = await committed_offsets(bootstrap, group)
    return sum(end - committed.get((tp.topic, tp.partition), 0) for tp, end in ends.items())


async def wait_caught_up(
    bootstrap: str,
    groups: dict[str, tuple[str, ...]],
    *,
    timeout_s: float,
    settle_s: float = 2.0,
    poll_s: float = 0.5,
    check: Callable[[], None] | None = None,
) -> dict[str, int]:
    """Wait until every group has no lag for `settle_s`; returns the last lags seen.

    `check` runs on every poll and may raise to stop waiting (e.g. a process died).
    """
    deadline = time.monotonic() + timeout_s
    clean_since: float | None = None
    lags: dict[str, int] = {}
    while time.monotonic() < deadline:
        if check is not None:
            check()
        lags = {g: await group_lag(bootstrap, g, t) for g, t in groups.items()}
        if all(v == 0 for v in lags.values()):
            clean_since = clean_since or time.monotonic()
            if time.monotonic() - clean_since >= settle_s:
                return lags
        else:
            clean_since = None
        await asyncio.sleep(poll_s)
    return lags
