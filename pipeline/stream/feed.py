"""What a batch worker's cycle does with the messages of one topic-partition, per topic: a
tick moves an idle partition's event time, the repartition topic brings forwarded events and
progress markers, and an input event is fed to the engine or, when it belongs to another
partition, forwarded there. The outputs go to the cycle's outbox.

The cycle itself (`pipeline.stream.batch`) decides which messages are processed and when
the outputs are durable and committed; how each topic's messages are handled is separate
from that, so it lives here.
"""

from __future__ import annotations

import time
from typing import Any

from pipeline import metrics
from pipeline.core.events import event_time
from pipeline.core.model import Source
from pipeline.kafka.topics import TOPIC_REPARTITION, TOPIC_TICKS
from pipeline.stream.codec import is_progress, repartition_headers
from pipeline.stream.outbox import Outbox
from pipeline.stream.runtime import WorkerRuntime

__all__ = ["Feed"]


class Feed:
    """One cycle's messages handed to the runtime: the outputs are added to `outbox`, and the
    CDRs and dead letters among them collected in `cdrs` and `dead` (for the metrics)."""

    def __init__(self, runtime: WorkerRuntime, outbox: Outbox) -> None:
        self.runtime = runtime
        self.outbox = outbox
        self.cdrs: list[Any] = []
        self.dead: list[Any] = []

    def records(self, topic: str, partition: int, records: list[Any]) -> None:
        """The messages of one topic-partition, in offset order."""
        if topic == TOPIC_TICKS:
            self._ticks(topic, partition, records)
        elif topic == TOPIC_REPARTITION:
            self._repartitioned(topic, partition, records)
        else:
            self._inputs(topic, partition, records)

    def _ticks(self, topic: str, partition: int, records: list[Any]) -> None:
        runtime, outbox, cdrs, dead = self.runtime, self.outbox, self.cdrs, self.dead
        for record in records:
            outcome = runtime.on_tick(partition, Source(topic, partition, record.offset))
            if outcome.cdrs or outcome.dead:
                outbox.add_outcome(outcome)
                cdrs += outcome.cdrs
                dead += outcome.dead

    def _repartitioned(self, topic: str, partition: int, records: list[Any]) -> None:
        runtime, outbox, cdrs, dead = self.runtime, self.outbox, self.cdrs, self.dead
        markers = 0
        for record in records:
            if is_progress(record.headers):
                outcome = runtime.on_progress(record.value, partition, record.offset)
                markers += 1
            else:
                outcome = runtime.on_forwarded(
                    record.value, partition, record.offset, record.headers
                )
            if outcome.cdrs or outcome.dead:
                outbox.add_outcome(outcome, record.key)
                cdrs += outcome.cdrs
                dead += outcome.dead
        metrics.EVENTS.labels(topic).inc(len(records) - markers)

    def _inputs(self, topic: str, partition: int, records: list[Any]) -> None:
        runtime, outbox, cdrs, dead = self.runtime, self.outbox, self.cdrs, self.dead
        engine = runtime.engine
        feed = engine.feed
        forwarded = 0
        newest = None  # event time of the messages read, processed or forwarded
        elsewhere = runtime.misrouted_many([record.value for record in records], partition)
        for record, canonical in zip(records, elsewhere, strict=True):
            value = record.value
            source = Source(topic, partition, record.offset)
            if canonical is not None:
                outbox.add(
                    TOPIC_REPARTITION, canonical, record.key, value,
                    repartition_headers(source), record.timestamp,
                )  # fmt: skip
                forwarded += 1
                ts = event_time(value)
            else:
                outcome = feed(value, source, partition)
                if outcome.cdrs or outcome.dead:
                    outbox.add_outcome(outcome, record.key)
                    cdrs += outcome.cdrs
                    dead += outcome.dead
                ts = engine.last_ts
            if ts is not None and (newest is None or ts > newest):
                newest = ts
        runtime.arrived(topic, partition, newest)
        if forwarded:
            runtime.forwarded(partition)
        runtime.last_event_wall[partition] = time.monotonic()
        metrics.EVENTS.labels(topic).inc(len(records) - forwarded)  # processed here
        if forwarded:
            metrics.MISROUTED.labels(topic).inc(forwarded)
