"""A batch worker's outputs of one cycle (CDRs, dead letters, changelog records, forwarded
messages), sent together in one producer batch per topic-partition."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaProducer

from pipeline.core.engine import Outcome
from pipeline.kafka.topics import TOPIC_CDR, TOPIC_DLQ
from pipeline.stream.codec import cdr_to_bytes, dead_letter_headers

__all__ = ["Outbox"]


class Outbox:
    """Messages of one cycle, appended to one producer batch per topic-partition (no
    coroutine per message), then sent together; `send()` returns when all are durable."""

    def __init__(self, producer: AIOKafkaProducer, partition_of: Any) -> None:
        self.producer = producer
        self.partition_of = partition_of  # call id -> partition of its CDRs
        self.open: dict[tuple[str, int], list[Any]] = {}  # [batch, records in it]
        self.full: list[tuple[str, int, Any, int]] = []
        self.count = 0

    def add(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
        timestamp: int | None = None,
    ) -> None:
        tp = (topic, partition)
        entry = self.open.get(tp)
        if entry is None:
            entry = self.open[tp] = [self.producer.create_batch(), 0]
        headers = headers or []
        if entry[0].append(key=key, value=value, timestamp=timestamp, headers=headers) is None:
            self.full.append((topic, partition, entry[0], entry[1]))
            entry = self.open[tp] = [self.producer.create_batch(), 0]
            if entry[0].append(key=key, value=value, timestamp=timestamp, headers=headers) is None:
                raise ValueError(f"message of {len(value or b'')} bytes exceeds a batch")
        entry[1] += 1
        self.count += 1

    def add_outcome(self, outcome: Outcome, key: bytes | None = None) -> None:
        """CDRs and dead letters go to the partition of the message that triggered them (a
        dead letter's source) - the call's partition, as the inputs are keyed by call id."""
        for cdr in outcome.cdrs:
            self.add(TOPIC_CDR, self.partition_of(cdr.id), cdr.id.encode(), cdr_to_bytes(cdr))
        for dead in outcome.dead:
            dead_key = dead.call_id.encode() if dead.call_id else key
            p = dead.source.partition
            self.add(TOPIC_DLQ, p, dead_key, dead.raw, dead_letter_headers(dead))

    async def send(self) -> dict[tuple[str, int], int]:
        """Send everything; returns, per topic-partition written, the offset after the last
        record (a partition's store checkpoints the changelog's)."""
        batches = self.full + [(t, p, b, n) for (t, p), (b, n) in self.open.items()]
        self.full, self.open, self.count = [], {}, 0
        futures = []
        for topic, partition, batch, _ in batches:
            batch.close()
            futures.append(await self.producer.send_batch(batch, topic, partition=partition))
        ends: dict[tuple[str, int], int] = {}
        if futures:
            sent = await asyncio.gather(*futures)
            for (topic, partition, _, n), meta in zip(batches, sent, strict=True):
                end = meta.offset + n
                if end > ends.get((topic, partition), -1):
                    ends[(topic, partition)] = end
        return ends
