"""The Faust worker: gateway topics -> correlation table -> `cdr.records` / `sip.call.dlq`.

`cdrpipe worker --engine faust`; `pipeline.stream.batch` is the faster default engine.

The agent is thin wiring over `pipeline.core.engine.Engine`: every message is
fed to the same code the offline replay runs. Call states live in a
changelog-backed Faust table keyed by call id, written on the partition of
the event being processed (all input topics share one partition count and are
keyed by call id, so a call's table entry and its events share a partition).

Event time only moves with events; a timer sends a keyed tick per assigned
partition into `cdrpipe.ticks` (co-partitioned with the inputs) so that an
idle partition's clock still moves with the wall clock, and deadlines are
handled inside the agent, where table writes are allowed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline import config, metrics
from pipeline.core.correlate import CallState, Deadlines
from pipeline.core.engine import Outcome
from pipeline.core.events import event_time
from pipeline.core.model import Source
from pipeline.core.refdata import RefDataHolder
from pipeline.kafka.membership import instance_id
from pipeline.kafka.topics import (
    CHANGELOG_CONFIG,
    INPUT_TOPICS,
    TOPIC_CDR,
    TOPIC_DLQ,
    TOPIC_REPARTITION,
    TOPIC_TICKS,
    WORKER_TOPICS,
)
from pipeline.state import codec
from pipeline.state.changelog import state_from_changelog, state_to_changelog
from pipeline.state.slots import claim_slot
from pipeline.state.table import SCHEME, CallTable
from pipeline.stream.codec import (
    PROGRESS_HEADERS,
    cdr_to_bytes,
    dead_letter_headers,
    is_progress,
    repartition_headers,
)
from pipeline.stream.progress import WORKER_GROUP, committed_offsets, end_offsets
from pipeline.stream.runtime import (
    REFDATA_POLL_S,
    TICK_INTERVAL_S,
    WATCHDOG_POLL_S,
    States,
    WorkerRuntime,
    check_commits,
    known_committed_offsets,
    reload_refdata,
    restart_in_place,
    tick_stamp,
    wait_for_broker,
)
from pipeline.stream.transport import SCHEME as STATIC_SCHEME
from pipeline.stream.watchdog import CommitFence, CommitWatchdog

log = logging.getLogger(__name__)

PRUNE_EVERY_S = 30.0  # how often triggers below the commits are dropped from the stores


class TableStates(States):
    """The Faust table seen as call id -> CallState, with a decoded write-through cache.

    The table holds bytes (its changelog is the durable state); the cache
    saves re-decoding on every event and is dropped at each rebalance.
    """

    def __init__(self, table: Any) -> None:
        self.table = table
        self.cache: dict[str, CallState] = {}

    def __getitem__(self, key: str) -> CallState:
        state = self.cache.get(key)
        if state is None:
            raw = self.table.get(key.encode())
            if raw is None:
                raise KeyError(key)
            state = state_from_changelog(raw)
            self._cached(key, state)
        return state

    def _cached(self, key: str, state: CallState) -> None:
        self.cache[key] = state

    def __setitem__(self, key: str, state: CallState) -> None:
        self.cache[key] = state
        self.table[key.encode()] = state_to_changelog(state)

    def __delitem__(self, key: str) -> None:
        self.cache.pop(key, None)
        del self.table[key.encode()]

    def __iter__(self) -> Iterator[str]:
        return (k.decode() if isinstance(k, bytes) else k for k in list(self.table.keys()))

    def __len__(self) -> int:
        return len(self.table)

    def refresh(self) -> None:
        self.cache.clear()


class DiskTableStates(TableStates):
    """`TableStates` over the table's local store (`CallTable`): only open calls are cached
    (few, and read by nearly every event); settled ones, the day of remembered calls, are
    read from disk when needed, so memory stays bounded by the calls in progress. The
    store keeps the deadline index (`deadlines`), and a settled call's forget deadline is
    read without decoding it (`settled_since`)."""

    def __init__(self, table: Any, store: CallTable) -> None:
        super().__init__(table)
        self.deadlines = store.deadlines

    def _cached(self, key: str, state: CallState) -> None:
        if not state.settled:
            self.cache[key] = state

    def __setitem__(self, key: str, state: CallState) -> None:
        if state.settled:
            self.cache.pop(key, None)
        else:
            self.cache[key] = state
        self.table[key.encode()] = state_to_changelog(state)

    def settled_since(self, call_id: str) -> datetime | None:
        if call_id in self.cache:
            return None
        raw = self.table.get(call_id.encode())
        return None if raw is None else codec.settled_since(raw)


def create_faust_app(
    *,
    bootstrap: str | None = None,
    name: str = "worker",
    partitions: int | None = None,
    settings: Deadlines | None = None,
    idle_after: float = 5.0,
    table_store: str | None = None,
    web_port: int | None = None,
) -> faust.App:
    """Build the worker app; every default comes from `pipeline.config` (the environment)."""
    bootstrap = bootstrap or config.kafka_bootstrap()
    partitions = partitions or config.partitions()
    settings = settings or config.deadlines()
    # Several workers of one host may share the data directory: each takes a slot of it
    # (the table's RocksDB files allow one process).
    slot = claim_slot(config.data_dir() / "faust" / name)
    datadir = slot.path
    store_url = table_store or config.environment().table_store
    # With the table in local stores, a static member: a restarted worker gets its
    # partitions (and their stores) back at once instead of after the session timeout.
    static = store_url.startswith(f"{SCHEME}://")
    app = faust.App(
        WORKER_GROUP,
        # Every topic, including the table's changelog, carries our own bytes: no JSON codec.
        key_serializer="raw",
        value_serializer="raw",
        broker=f"kafka://{bootstrap}",
        broker_consumer=f"{STATIC_SCHEME if static else 'kafka'}://{bootstrap}",
        consumer_group_instance_id=instance_id(f"faust-{name}", slot.index) if static else None,
        store=store_url,
        datadir=str(datadir),
        topic_partitions=partitions,
        topic_replication_factor=1,
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        # Table changelog writes, CDRs and dead letters are many small messages: let the
        # producer batch them instead of one produce request per message.
        producer_linger=0.005,
        producer_max_batch_size=256 * 1024,
        producer_compression_type=config.compression(),
        # A worker that died (SIGKILL, lost host) holds its partitions until the group
        # notices: 10 s instead of Faust's 60 s bounds how long those calls stall.
        broker_session_timeout=config.session_timeout(True),
        broker_heartbeat_interval=2.0,
        broker_commit_every=5000,
        broker_commit_interval=1.0,
        stream_wait_empty=True,
        web_enabled=web_port is not None,
        web_bind="127.0.0.1",
        web_port=web_port or 6066,
        web_host="127.0.0.1",
        table_cleanup_interval=3600.0,
    )
    refdata = RefDataHolder(config.config_dir())
    inputs = app.topic(
        *WORKER_TOPICS,
        key_serializer="raw",
        value_serializer="raw",
        partitions=partitions,
    )
    ticks = app.topic(
        TOPIC_TICKS, key_serializer="raw", value_serializer="raw", partitions=partitions
    )
    records = app.topic(
        TOPIC_CDR, key_serializer="raw", value_serializer="raw", partitions=partitions
    )
    repartition = app.topic(
        TOPIC_REPARTITION, key_serializer="raw", value_serializer="raw", partitions=partitions
    )
    dlq = app.topic(TOPIC_DLQ, key_serializer="raw", value_serializer="raw", partitions=partitions)
    # key_type/value_type bytes make Faust use the raw codec for the changelog too (with a
    # `schema=` only, recovery would JSON-decode our bytes and never finish).
    table = app.Table(
        "calls",
        default=None,
        key_type=bytes,
        value_type=bytes,
        partitions=partitions,
        # A call's state is written once per event; compaction keeps the newest per call, but
        # only in closed segments. Rolling them every 5 minutes (Kafka: 7 days) lets the log
        # cleaner shrink what a restarted worker has to replay before it can take traffic.
        extra_topic_configs=CHANGELOG_CONFIG,
    )
    store = table.data
    states: TableStates
    if isinstance(store, CallTable):
        store.settings = settings
        store.bootstrap = bootstrap
        states = DiskTableStates(table, store)
    else:
        states = TableStates(table)
    runtime = WorkerRuntime(refdata, states, settings, partitions, idle_after)
    app.cdrpipe_runtime = runtime  # type: ignore[attr-defined]
    app.cdrpipe_slot = slot  # type: ignore[attr-defined]

    async def publish(outcome: Outcome, key: bytes | None) -> None:
        for cdr in outcome.cdrs:
            await records.send(key=cdr.id.encode(), value=cdr_to_bytes(cdr))
        for dead in outcome.dead:
            await dlq.send(
                key=dead.call_id.encode() if dead.call_id else key,
                value=dead.raw,
                headers=dead_letter_headers(dead),
            )

    @app.agent(inputs, concurrency=1)
    async def correlate(stream: faust.StreamT) -> None:
        # The worker's log set-up leaves aiokafka at DEBUG: a log record per produce request.
        logging.getLogger("aiokafka").setLevel(logging.WARNING)
        async for event in stream.events():
            msg = event.message
            tp = (msg.topic, msg.partition)
            verdict = fence.check(tp, msg.offset)
            if verdict == "seen":
                continue
            if verdict == "hole":
                expected = fence.limit(tp)
                assert expected is not None
                first = await first_offset(bootstrap, msg.topic, msg.partition, expected)
                if first is None or first < msg.offset:
                    log.error(
                        "%s[%d]: got offset %d, offsets from %d never arrived:"
                        " restarting this worker",
                        msg.topic, msg.partition, msg.offset, expected,
                    )  # fmt: skip
                    restart_in_place()
                fence.accept_gap(tp, msg.offset)
            if msg.topic == TOPIC_TICKS:
                outcome = runtime.on_tick(
                    msg.partition, Source(msg.topic, msg.partition, msg.offset)
                )
                metrics.record_products(outcome)
            elif msg.topic == TOPIC_REPARTITION:
                if is_progress(msg.headers):
                    outcome = runtime.on_progress(event.value, msg.partition, msg.offset)
                    metrics.record_products(outcome)
                else:
                    outcome = runtime.on_forwarded(
                        event.value, msg.partition, msg.offset, msg.headers
                    )
                    metrics.record_outcome(msg.topic, outcome)
            elif (canonical := runtime.misrouted(event.value, msg.partition)) is not None:
                # Another partition's call: there, not here (`pipeline.core.partitioning`).
                await repartition.send(
                    key=msg.key,
                    value=event.value,
                    partition=canonical,
                    timestamp=msg.timestamp,
                    headers=repartition_headers(Source(msg.topic, msg.partition, msg.offset)),
                )
                metrics.MISROUTED.labels(msg.topic).inc()
                runtime.arrived(msg.topic, msg.partition, event_time(event.value))
                runtime.forwarded(msg.partition)
                outcome = Outcome()
            else:
                outcome = runtime.on_message(event.value, msg.topic, msg.partition, msg.offset)
                runtime.arrived(msg.topic, msg.partition, runtime.engine.last_ts)
                metrics.record_outcome(msg.topic, outcome)
            if outcome.cdrs or outcome.dead:
                await publish(outcome, msg.key)
            fence.processed(tp, msg.offset)

    @app.timer(TICK_INTERVAL_S)
    async def tick() -> None:
        # Calls touched since the last rebalance (decoding the whole table each second would
        # cost more than the gauge is worth).
        metrics.OPEN_CALLS.set(sum(1 for s in runtime.states.cache.values() if not s.settled))
        stamp = tick_stamp()
        for p in sorted(runtime.assigned):
            await ticks.send(key=b"tick", value=stamp, partition=p)
        # After the forwards the agent has sent (one producer: each partition keeps the order)
        marker = runtime.progress(force=True)
        if marker is not None:
            for p in range(partitions):
                await repartition.send(value=marker, partition=p, headers=PROGRESS_HEADERS)

    @app.timer(REFDATA_POLL_S)
    async def poll_refdata() -> None:
        reload_refdata(refdata)

    fence = CommitFence()
    # The fence knows what the agent processed: a partition starved while the agent works
    # through a backlog elsewhere is told from one whose commit or delivery is stuck.
    watchdog = CommitWatchdog(stall_s=config.environment().stall_s, processed=fence.limit)

    @app.timer(WATCHDOG_POLL_S)
    async def watch_commits() -> None:
        if app.rebalancing or not runtime.assigned:
            watchdog.reset(time.monotonic())  # table recovery may take its time
            return
        owned = {
            (tp.topic, tp.partition)
            for tp in app.consumer.assignment()
            if tp.topic in WORKER_TOPICS
        }
        # The broker's end offsets, not the consumer's highwater marks: those only move
        # when the consumer fetches the partition, and a partition it no longer fetches
        # would look as if nothing waited on it.
        try:
            ends = await end_offsets(bootstrap, WORKER_TOPICS)
        except Exception:
            watchdog.reset(time.monotonic())  # a broker that does not answer is no stall
            return
        owned_ends = {
            (tp.topic, tp.partition): end
            for tp, end in ends.items()
            if (tp.topic, tp.partition) in owned
        }
        await check_commits(watchdog, bootstrap, owned_ends)

    if isinstance(store, CallTable):

        @app.timer(PRUNE_EVERY_S)
        async def prune_triggers() -> None:
            if app.rebalancing or not runtime.assigned:
                return
            try:
                committed = await committed_offsets(bootstrap, WORKER_GROUP, strict=True)
            except Exception:
                return  # the next round
            for p in runtime.assigned:
                store.prune(p, committed)

    @app.on_rebalance_complete.connect
    async def on_rebalance_complete(sender: Any, **kwargs: Any) -> None:
        assigned = {tp.partition for tp in app.consumer.assignment() if tp.topic in INPUT_TOPICS}
        committed = await known_committed_offsets(bootstrap)
        install_commit_fence(app, fence)
        fence.reset(
            committed,
            [
                (tp.topic, tp.partition)
                for tp in app.consumer.assignment()
                if tp.topic in WORKER_TOPICS
            ],
        )
        if isinstance(store, CallTable):
            # Nothing is read through: the store keeps the index, clocks and triggers.
            runtime.states.refresh()
            doubtful = [s for p in sorted(assigned) for s in store.in_doubt(p, committed)]
            clocks = {p: store.clock(p) for p in assigned}
            log.info(
                "table stores: %d changelog records recovered, unusable stores wiped: %s",
                store.applied,
                store.problems or "none",
            )
            outcome = runtime.reassign(assigned, clocks, doubtful)
        else:
            outcome = runtime.on_assigned(assigned, committed)
        if outcome.cdrs or outcome.dead:
            await publish(outcome, None)
            metrics.RESENT.inc(len(outcome.cdrs) + len(outcome.dead))
        metrics.ASSIGNED.set(len(assigned))
        watchdog.reset(time.monotonic())

    return app


async def first_offset(bootstrap: str, topic: str, partition: int, start: int) -> int | None:
    """Offset of the first message at or after `start` the broker holds (None: no answer)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, start)
        batch = await consumer.getmany(tp, timeout_ms=5000, max_records=1)
        records = batch.get(tp) or []
        return records[0].offset if records else None
    except Exception:
        return None
    finally:
        await consumer.stop()


def install_commit_fence(app: faust.App, fence: CommitFence) -> None:
    """Make Faust commit exactly what `fence` says was processed (faust-streaming 0.15.3).

    Faust's consumer picks the partitions and offsets to commit from its acknowledged
    offsets (`_filter_tps_with_pending_acks`, `_filter_committable_offsets`); both are
    replaced, the rest of its commit path (flush the producer, then commit) is kept.
    """
    from faust.types import TP as FaustTP

    consumer = app.consumer
    if getattr(consumer, "_cdrpipe_fenced", False):
        return

    def pending(topics: Any = None) -> Iterator[Any]:
        owned = consumer.assignment()
        for topic, partition in fence.owned():
            tp = FaustTP(topic, partition)
            if tp in owned:
                yield tp

    def committable(tps: Any) -> dict[Any, int]:
        out = {}
        for tp in tps:
            limit = fence.limit((tp.topic, tp.partition))
            committed = consumer._committed_offset[tp]  # noqa: SLF001
            if limit is not None and (committed is None or limit > committed):
                out[tp] = limit
        return out

    consumer._filter_tps_with_pending_acks = pending  # noqa: SLF001
    consumer._filter_committable_offsets = committable  # noqa: SLF001
    consumer._cdrpipe_fenced = True  # noqa: SLF001


def run_worker(*, metrics_port: int | None = None, **kwargs: Any) -> None:
    """Run one worker process until it is stopped (SIGTERM/SIGINT)."""
    asyncio.run(wait_for_broker(kwargs.get("bootstrap") or config.kafka_bootstrap()))
    app = create_faust_app(**kwargs)
    metrics.serve(metrics_port)
    worker = faust.Worker(app, loglevel=config.environment().loglevel, quiet=True)
    worker.execute_from_commandline()
