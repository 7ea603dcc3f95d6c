"""Kafka topic names and idempotent topic provisioning.

The broker runs with ``auto.create.topics.enable=false``, so every topic the pipeline uses is
created here, explicitly, with one partition count: the three ``sip.call.*`` input topics must
share it so the start/connect/end events of one call (keyed by call id) land on the same
partition number and therefore in the same stream task.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from pipeline.core.partitioning import DEFAULT_PARTITIONS

TOPIC_START = "sip.call.start"
TOPIC_CONNECT = "sip.call.connect"
TOPIC_END = "sip.call.end"
TOPIC_DLQ = "sip.call.dlq"
TOPIC_CDR = "cdr.records"
TOPIC_TICKS = "cdrpipe.ticks"
# Messages that arrived off their call's canonical partition, forwarded to it by the worker
# that read them (`pipeline.core.partitioning`); co-partitioned with the inputs.
TOPIC_REPARTITION = "cdrpipe.repartition"
# The workers' call states (the name Faust gives the changelog of table "calls" of app
# "cdrpipe", so both worker engines read and write the same durable state).
TOPIC_CHANGELOG = "cdrpipe-calls-changelog"

TP = tuple[str, int]  # (topic, partition)

INPUT_TOPICS: tuple[str, ...] = (TOPIC_START, TOPIC_CONNECT, TOPIC_END)
ALL_TOPICS: tuple[str, ...] = (
    *INPUT_TOPICS,
    TOPIC_DLQ,
    TOPIC_CDR,
    TOPIC_TICKS,
    TOPIC_CHANGELOG,
    TOPIC_REPARTITION,
)
# Partition p of each holds the events of the calls of partition p.
CO_PARTITIONED: tuple[str, ...] = (*INPUT_TOPICS, TOPIC_REPARTITION)
# What a worker (either engine) consumes, partition by partition.
WORKER_TOPICS: tuple[str, ...] = (*CO_PARTITIONED, TOPIC_TICKS)
# A call's state is written once per change; compaction keeps the newest per call, but only
# in closed segments. Rolling them every 5 minutes (Kafka: 7 days) lets the log cleaner
# shrink what a restarted worker has to read before it can take traffic.
CHANGELOG_CONFIG = {"segment.ms": "300000", "min.cleanable.dirty.ratio": "0.2"}
TOPIC_CONFIGS: dict[str, dict[str, str]] = {
    TOPIC_CHANGELOG: {"cleanup.policy": "compact", **CHANGELOG_CONFIG},
}

# Kafka protocol error codes we handle by name.
_OK = 0
_UNKNOWN_TOPIC = 3
_TOPIC_ALREADY_EXISTS = 36

T = TypeVar("T")


class TopicError(RuntimeError):
    """A topic could not be created/deleted, or exists with an incompatible layout."""


class TopicPartitionMismatch(TopicError):
    """An input topic already exists with a partition count other than the requested one.

    Not fixed automatically: adding partitions re-maps call ids to partitions (splitting the
    events of in-flight calls), and removing partitions is impossible in Kafka.
    """


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion from synchronous code, even inside a running event loop.

    Inside a loop (e.g. a Faust/async CLI command) ``asyncio.run`` would refuse, so the coroutine
    gets its own loop in a worker thread; the caller's loop is blocked meanwhile, so async code
    should prefer the ``*_async`` functions.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="kafka-sync") as pool:
        return pool.submit(asyncio.run, coro).result()


async def _partition_counts(
    admin: AIOKafkaAdminClient, topics: Iterable[str], *, need_leaders: bool = False
) -> dict[str, int]:
    """Partition count of each of ``topics`` that exists (absent topics are left out).

    With ``need_leaders`` a topic whose partitions are not all led yet counts as absent, which
    is what "created and usable" means to a producer.
    """
    counts: dict[str, int] = {}
    for meta in await admin.describe_topics(list(topics)):
        if meta["error_code"] != _OK:
            continue
        partitions = meta["partitions"]
        if need_leaders and (
            not partitions or any(p["error_code"] != _OK or p["leader"] < 0 for p in partitions)
        ):
            continue
        counts[meta["topic"]] = len(partitions)
    return counts


def _check_inputs(counts: dict[str, int], partitions: int) -> None:
    wrong = {t: n for t, n in counts.items() if t in CO_PARTITIONED and n != partitions}
    if wrong:
        found = ", ".join(f"{t}={n}" for t, n in sorted(wrong.items()))
        raise TopicPartitionMismatch(
            f"input topics must all have {partitions} partitions, found {found}; "
            "re-run with the existing count (--partitions) or delete the topics first"
        )


async def ensure_topics_async(
    bootstrap: str,
    partitions: int = DEFAULT_PARTITIONS,
    *,
    replication_factor: int = 1,
    timeout: float = 30.0,
) -> dict[str, int]:
    """Create any missing pipeline topic; return ``{topic: partition count}`` for all of them.

    Idempotent: existing topics are kept as they are, except that an existing input topic with
    a different partition count raises :class:`TopicPartitionMismatch` before anything is
    created. Returns only once every partition has a leader, so producing right after works.
    """
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
    await admin.start()
    try:
        existing = await _partition_counts(admin, ALL_TOPICS)
        _check_inputs(existing, partitions)
        missing = [t for t in ALL_TOPICS if t not in existing]
        if missing:
            response = await admin.create_topics(
                [
                    NewTopic(t, partitions, replication_factor, topic_configs=TOPIC_CONFIGS.get(t))
                    for t in missing
                ],
                timeout_ms=int(timeout * 1000),
            )
            for entry in response.topic_errors:
                # (name, error_code[, error_message]) depending on the protocol version.
                name, code = entry[0], entry[1]
                if code not in (_OK, _TOPIC_ALREADY_EXISTS):
                    message = entry[2] if len(entry) > 2 else ""
                    raise TopicError(f"creating topic {name} failed: error {code} {message}")
        deadline = time.monotonic() + timeout
        while True:
            counts = await _partition_counts(admin, ALL_TOPICS, need_leaders=True)
            if len(counts) == len(ALL_TOPICS):
                break
            if time.monotonic() > deadline:
                absent = sorted(set(ALL_TOPICS) - set(counts))
                raise TopicError(f"topics not ready after {timeout:.0f}s: {', '.join(absent)}")
            await asyncio.sleep(0.2)
        # A concurrent creator may have won the race with another count.
        _check_inputs(counts, partitions)
        return {t: counts[t] for t in ALL_TOPICS}
    finally:
        await admin.close()


async def delete_topics_async(
    bootstrap: str, topics: Iterable[str] = ALL_TOPICS, *, timeout: float = 30.0
) -> list[str]:
    """Delete those of ``topics`` that exist and wait until they are gone; return their names.

    Meant for tests and resets: deletion in Kafka is asynchronous, and re-creating a topic
    that is still being deleted fails, hence the wait.
    """
    wanted = list(topics)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
    await admin.start()
    try:
        existing = list(await _partition_counts(admin, wanted))
        if not existing:
            return []
        response = await admin.delete_topics(existing, timeout_ms=int(timeout * 1000))
        for entry in response.topic_error_codes:
            name, code = entry[0], entry[1]
            if code not in (_OK, _UNKNOWN_TOPIC):
                raise TopicError(f"deleting topic {name} failed: error {code}")
        deadline = time.monotonic() + timeout
        while await _partition_counts(admin, existing):
            if time.monotonic() > deadline:
                raise TopicError(f"topics still present after {timeout:.0f}s: {existing}")
            await asyncio.sleep(0.2)
        return existing
    finally:
        await admin.close()


def ensure_topics(bootstrap: str, partitions: int = DEFAULT_PARTITIONS) -> dict[str, int]:
    """Synchronous :func:`ensure_topics_async` (for the CLI and tests)."""
    return run_sync(ensure_topics_async(bootstrap, partitions))


def delete_topics(bootstrap: str, topics: Iterable[str] = ALL_TOPICS) -> list[str]:
    """Synchronous :func:`delete_topics_async` (for tests and resets)."""
    return run_sync(delete_topics_async(bootstrap, topics))
