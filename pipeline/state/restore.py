"""Bringing a partition's local store up to the changelog (`pipeline.state.checkpointed`).

A store is read from its checkpoint on (a restart on the same host: a cycle or two of
records), or from the changelog's beginning (a partition new to this host, or a store that
was not usable): the same code, in bulk. The changelog is read with librdkafka
(confluent-kafka) in a thread: a rebuild moves millions of records, and aiokafka's
Python-side fetch decoding alone took half of a rebuild's time, where librdkafka fetches in
its own threads while this one writes the store.

A partition whose store lacks many records (`APART_FROM`; a new host, a store rebuilt) is
brought up in a process of its own when several are (spawned, one per core): a rebuild is
CPU-bound Python and RocksDB calls, and the partitions' stores are independent.

Which outputs a crash may have lost: each cycle commits, beside each input offset, the
changelog offset its own records end at (commit metadata). Records from that offset on were
written by cycles whose commit did not happen; of those, the states whose trigger lies at
or after the committed input offset have outputs in doubt, to be sent again.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, KafkaException
from confluent_kafka import TopicPartition as RdTopicPartition
from rocksdict import Cache, WriteBufferManager

from pipeline.core.correlate import CallState, Deadlines
from pipeline.kafka.topics import TOPIC_CHANGELOG, TP
from pipeline.state.changelog import state_from_changelog
from pipeline.state.checkpointed import (
    MAX_STORE_AGE_S,
    WRITE_BUFFERS_TOTAL,
    PartitionStore,
    Rebuild,
)
from pipeline.state.rocks import BLOCK_CACHE

log = logging.getLogger(__name__)

BATCH = 20_000  # records taken from librdkafka at a time
APART_FROM = 200_000  # records a store lacks to be caught up in a process of its own


@dataclass
class Restored:
    """What a catch-up did: records read, of which applied to the store, and the states of
    the partition whose outputs are in doubt (newest per call)."""

    partition: int
    read: int = 0
    applied: int = 0
    rebuilt: bool = False
    problem: str | None = None
    seconds: float = 0.0
    doubtful: list[CallState] = field(default_factory=list)


def changelog_consumer(bootstrap: str) -> Consumer:
    """A librdkafka consumer for reading the changelog (assigned, nothing committed)."""
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "cdrpipe-restore",  # required by librdkafka; nothing is committed
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.max.bytes": 64 << 20,
            "max.partition.fetch.bytes": 16 << 20,
            "queued.max.messages.kbytes": 64 << 10,  # what librdkafka fetches ahead
        }
    )


def trim_heap() -> None:
    """Give the heap a recovery left free back to the system (glibc's `malloc_trim`;
    elsewhere nothing). A catch-up passes hundreds of MB of records and RocksDB write
    buffers through malloc; freed, they stayed in the worker's RSS (600 MB after 1M
    records) although the next cycles need a fraction of it."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def records_behind(bootstrap: str, stores: list[PartitionStore]) -> dict[int, int]:
    """Per store's partition, the changelog records it lacks (all, without a usable
    checkpoint)."""
    consumer = changelog_consumer(bootstrap)
    try:
        behind = {}
        for store in stores:
            tp = RdTopicPartition(TOPIC_CHANGELOG, store.partition)
            begin, end = consumer.get_watermark_offsets(tp, 10)
            cp = store.checkpoint
            start = cp.changelog if cp is not None and begin <= cp.changelog <= end else begin
            behind[store.partition] = end - start
        return behind
    finally:
        consumer.close()


def catch_up_apart(
    bootstrap: str,
    root: Path,
    partition: int,
    partitions: int,
    settings: Deadlines,
    commits: Mapping[TP, tuple[int, str]],
    topics: tuple[str, ...],
) -> Restored:
    """`catch_up` of one partition's store in a process of its own (spawned: RocksDB does
    not survive a fork); its states in doubt are left to the owner's own `catch_up` after."""
    cache, manager = Cache(BLOCK_CACHE), WriteBufferManager(WRITE_BUFFERS_TOTAL, False)
    store = PartitionStore(root, partition, partitions, cache, manager)
    try:
        done = catch_up(bootstrap, store, settings, commits, topics, doubt=False)
    finally:
        store.close()
    return done


def doubt_from(
    partition: int, commits: Mapping[TP, tuple[int, str]], topics: tuple[str, ...]
) -> int:
    """The changelog offset from which a partition's records may come from uncommitted
    cycles: the smallest one committed as metadata beside its input offsets; 0 (every record)
    when a commit carries none (committed by another engine, or none yet)."""
    marks = []
    for topic in topics:
        commit = commits.get((topic, partition))
        if commit is None:
            continue
        try:
            marks.append(int(commit[1]))
        except ValueError:
            return 0
    return min(marks) if marks else 0


def read_changelog(
    consumer: Consumer, partition: int, first: int, end: int
) -> Iterator[list[tuple[int, bytes, bytes | None]]]:
    """The changelog partition's records from offset `first` up to `end` (its end when the
    reading began), as lists of (offset, key, value; None for a tombstone)."""
    if first >= end:
        return
    consumer.assign([RdTopicPartition(TOPIC_CHANGELOG, partition, first)])
    position = first
    while position < end:
        # Never more than the records left: librdkafka waits for the count asked (or the
        # timeout), and the partition's end is known.
        messages = consumer.consume(min(BATCH, end - position), 1.0)
        batch = []
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    position = end
                    continue
                raise KafkaException(error)
            offset = message.offset()
            if offset >= end:
                position = end
                break
            position = offset + 1
            batch.append((offset, message.key(), message.value()))
        yield batch


def catch_up(
    bootstrap: str,
    store: PartitionStore,
    settings: Deadlines,
    commits: Mapping[TP, tuple[int, str]],
    topics: tuple[str, ...],
    doubt: bool = True,
) -> Restored:
    """Bring `store` up to the changelog's current end and write its checkpoint; blocking
    (run it in a thread). `commits`: the group's (offset, metadata) per input topic-partition;
    `topics`: the input topics of a partition; without `doubt`, the states in doubt are not
    looked for."""
    started = time.monotonic()
    p = store.partition
    result = Restored(p)
    consumer = changelog_consumer(bootstrap)
    try:
        begin, end = consumer.get_watermark_offsets(RdTopicPartition(TOPIC_CHANGELOG, p), 10)
        problem = store.check(begin, end, MAX_STORE_AGE_S) or store.problem
        result.problem = problem
        cp = store.checkpoint
        start = cp.changelog if cp is not None else 0
        result.rebuilt = cp is None
        doubt_at = doubt_from(p, commits, topics) if doubt else end
        first = max(begin, min(start, doubt_at))
        rebuild = Rebuild(store, settings)
        doubtful: dict[bytes, CallState | None] = {}
        for batch in read_changelog(consumer, p, first, end):
            records = []
            for offset, key, value in batch:
                if offset >= start:
                    records.append((key, value))
                if offset >= doubt_at:
                    doubtful[key] = None if value is None else state_from_changelog(value)
            result.read += len(batch)
            rebuild.apply(records)
        inputs = {t: commits[(t, p)][0] for t in topics if (t, p) in commits}
        rebuild.finish(end, inputs)
        result.applied = rebuild.applied
        for state in doubtful.values():
            t = state.trigger if state is not None else None
            if t is not None and t.offset >= commits.get((t.topic, t.partition), (0, ""))[0]:
                result.doubtful.append(state)  # type: ignore[arg-type]
    finally:
        consumer.close()
        trim_heap()  # per partition: the RSS peaks at one partition's catch-up, not all
    result.seconds = time.monotonic() - started
    return result
