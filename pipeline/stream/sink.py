"""The store sink: `cdr.records` -> ClickHouse in batches, offsets committed after the insert.

One sink process owns the embedded chDB directory (chDB allows one process per
data directory). Against a ClickHouse server, several sinks can share the
topic as one consumer group. While the store is failing the sink retries with
back-off and does not fetch meanwhile, so Kafka holds the backlog and memory
stays bounded (the poll interval limit is set high so the group keeps its
partitions). Nothing is dropped and, because offsets are committed only after
a successful insert, a crash re-inserts at worst the last batch, which the
store's idempotency (by call id and revision) absorbs.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import AIOKafkaConsumer

from pipeline import config, metrics
from pipeline.kafka.topics import TOPIC_CDR

log = logging.getLogger(__name__)


class StoreUnavailable(RuntimeError):
    """The store must not be written now (maintenance hold): treated like an outage."""


def held_by(
    path: Path | None, write: Callable[[list[bytes]], object]
) -> Callable[[list[bytes]], object]:
    """`write`, failing with StoreUnavailable while the file `path` exists.

    Operators create the file to pause inserts during store maintenance (the
    sink keeps its backlog in Kafka and retries until the file is gone); the
    reliability suite uses it to cut the store off at a moment of its choosing.
    """
    if path is None:
        return write

    def guarded(rows: list[bytes]) -> object:
        if path.exists():
            raise StoreUnavailable(f"store writes held while {path} exists")
        return write(rows)

    return guarded


@dataclass(slots=True)
class SinkStats:
    records: int = 0
    rows_written: int = 0
    batches: int = 0
    failures: int = 0
    last_insert_s: float = 0.0
    insert_seconds: list[float] = field(default_factory=list)


class Sink:
    """Batches CDR records by size and time and writes them with `write` (blocking).

    Records are handed over as they came (JSON bytes): the store parses them. Versions of
    one call in a batch are all written; the table keeps the highest revision (coalescing
    here would need each record decoded, and "last by offset" is not "highest revision").
    """

    def __init__(
        self,
        write: Callable[[list[bytes]], object],
        *,
        bootstrap: str | None = None,
        group: str = "cdrpipe-sink",
        batch_size: int = 20_000,
        max_wait_s: float = 1.0,
        max_backoff_s: float = 10.0,
    ) -> None:
        self.write = write
        self.bootstrap = bootstrap or config.kafka_bootstrap()
        self.group = group
        self.batch_size = batch_size
        self.max_wait_s = max_wait_s
        self.max_backoff_s = max_backoff_s
        self.stats = SinkStats()
        self._stopping = asyncio.Event()
        self._next: dict[object, int] = {}  # next offset to consume, per partition

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(
            TOPIC_CDR,
            bootstrap_servers=self.bootstrap,
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.batch_size,
            max_poll_interval_ms=24 * 3600 * 1000,
            fetch_min_bytes=256 * 1024,  # fewer, fuller fetches under load (as the workers)
            fetch_max_wait_ms=50,
        )
        await consumer.start()
        pending: list[bytes] = []
        first_at: float | None = None
        try:
            while not self._stopping.is_set():
                polled = await consumer.getmany(timeout_ms=200, max_records=self.batch_size)
                for tp, messages in polled.items():
                    if messages:
                        self._next[tp] = messages[-1].offset + 1
                        pending += [msg.value for msg in messages]
                        self.stats.records += len(messages)
                self._report_lag(consumer)
                if pending and first_at is None:
                    first_at = time.monotonic()
                due = first_at is not None and time.monotonic() - first_at >= self.max_wait_s
                if pending and (len(pending) >= self.batch_size or due):
                    await self._flush(consumer, pending)
                    first_at = None
            if pending:
                await self._flush(consumer, pending)
        finally:
            await consumer.stop()

    def _report_lag(self, consumer: AIOKafkaConsumer) -> None:
        lag = 0
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is not None and tp in self._next:
                lag += max(0, high - self._next[tp])
        metrics.LAG.labels(TOPIC_CDR).set(lag)

    async def _flush(self, consumer: AIOKafkaConsumer, pending: list[bytes]) -> None:
        rows = pending[:]
        backoff = 0.1
        while True:
            started = time.perf_counter()
            try:
                await asyncio.to_thread(self.write, rows)
                break
            except Exception as exc:  # the store is down or refusing: keep the rows, retry
                self.stats.failures += 1
                metrics.SINK_FAILURES.inc()
                log.warning(
                    "store write of %d rows failed (%s); retrying in %.1fs", len(rows), exc, backoff
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
        elapsed = time.perf_counter() - started
        metrics.SINK_BATCH.observe(len(rows))
        metrics.SINK_INSERT.observe(elapsed)
        await consumer.commit()
        pending.clear()
        self.stats.rows_written += len(rows)
        self.stats.batches += 1
        self.stats.last_insert_s = elapsed
        log.info("stored %d CDRs in %.3fs", len(rows), elapsed)


def run_sink(
    store: str | None = None, *, metrics_port: int | None = None, **kwargs: object
) -> SinkStats:
    """Run a sink into the store at `store` until SIGTERM/SIGINT; returns its stats."""
    metrics.serve(metrics_port)
    from pipeline.store.client import connect
    from pipeline.store.writer import CdrWriter

    writer = CdrWriter(connect(store))
    write = held_by(config.environment().sink_hold_file, writer.write_json)
    sink = Sink(write, **kwargs)  # type: ignore[arg-type]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, sink.stop)
        await sink.run()

    asyncio.run(main())
    return sink.stats
