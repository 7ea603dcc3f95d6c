"""The batch worker (`cdrpipe worker`, the default engine): the engine over a plain aiokafka
consumer group, one batch of messages at a time.

Why not Faust here: Faust hands every message through its conductor, a channel queue and
its stream iterator, one event-loop cycle per message, and writes a table changelog
message per event through its producer wrappers. On the project machine that machinery
alone caps a worker at 7.5-14k messages/s with no work done at all, against 220-320k/s for a
raw aiokafka consumer (`bench/faust_ceiling.py`, docs/BENCHMARKS.md);
the Faust worker (`--engine faust`, `pipeline.stream.faust_engine`) stays available and computes the
same CDRs.

One cycle of this worker:

1. fetch up to `max_records` messages of the owned partitions (`getmany`);
2. feed each to the `Engine` (ticks move idle partitions' event time, as in the Faust agent);
3. append the CDRs, dead letters and - once per call touched in the batch - the new call
   states (the changelog `cdrpipe-calls-changelog`, Faust's format and name) to per-partition
   producer batches, and wait until the broker acknowledged all of them (acks=all);
4. commit the offsets after the last message processed, per partition.

So a commit never covers an effect that is not durable. A crash between 3 and 4 leaves
states durable whose outputs may or may not be; after recovery the outputs triggered at or
after the committed offsets are sent again (`WorkerRuntime.on_assigned`), exactly as in the
Faust worker. A produce that fails, or states that can no longer match what is durable,
make the worker restart itself in place.

Rebalances use Kafka's eager protocol: a cycle in progress finishes (and commits) before
partitions are given up (a lock), states of partitions no longer owned are dropped, and
those of newly owned partitions are read from the changelog before the first message.

This module holds the worker's life cycle and its cycle; the parts live beside it: what each
topic's messages do (`feed`), the local stores' checkpoints (`checkpointing`), the work of a
rebalance (`assignment`) and the periodic jobs (`background`), all in `pipeline.stream`.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import IllegalGenerationError, UnknownMemberIdError

from pipeline import config, metrics
from pipeline.core.correlate import Deadlines
from pipeline.core.engine import Outcome
from pipeline.core.refdata import RefDataHolder
from pipeline.kafka.membership import instance_id, leave
from pipeline.kafka.topics import (
    CO_PARTITIONED,
    INPUT_TOPICS,
    TOPIC_CHANGELOG,
    TOPIC_REPARTITION,
    TP,
    WORKER_TOPICS,
    ensure_topics_async,
)
from pipeline.logs import configure_logging, dump_tasks
from pipeline.state.changelog import state_to_changelog
from pipeline.state.checkpointed import DiskStates, StoreCorrupt
from pipeline.state.slots import claim_slot
from pipeline.stream.alignment import TimeAlignment
from pipeline.stream.assignment import ASSIGNOR, RebalanceListener, Recovery, stale_partitions
from pipeline.stream.background import BackgroundJobs
from pipeline.stream.checkpointing import cycle_checkpoints, marked_commit
from pipeline.stream.codec import PROGRESS_HEADERS
from pipeline.stream.feed import Feed
from pipeline.stream.fetch import (
    FETCH_MAX_BYTES,
    fetch_evenly,
    in_topic_order,
    partition_fetch_bytes,
)
from pipeline.stream.gc_policy import GcPolicy
from pipeline.stream.memory_states import ChangelogStates
from pipeline.stream.outbox import Outbox
from pipeline.stream.progress import WORKER_GROUP
from pipeline.stream.runtime import (
    WorkerRuntime,
    known_commits,
    restart_in_place,
    wait_for_broker,
)
from pipeline.stream.watchdog import CommitWatchdog

log = logging.getLogger(__name__)

MAX_RECORDS = 20_000  # messages per cycle
# After an assignment the first cycle takes an eighth of that, and each next one twice as many:
# its outputs and commit come after 2,500 messages instead of 20,000 (`bench/startup_bench.py`).
RAMP_FROM = 8
OWN_TOPICS = WORKER_TOPICS
COMMIT_TIMEOUT_S = 10.0


class BatchWorker:
    """One worker process: owns some partitions of the input topics via the consumer group."""

    def __init__(
        self,
        *,
        bootstrap: str | None = None,
        partitions: int | None = None,
        settings: Deadlines | None = None,
        idle_after: float = 5.0,
        max_records: int = MAX_RECORDS,
        state_dir: Path | None = None,
    ) -> None:
        self.env = config.environment()  # read once: each read parses the environment
        self.bootstrap = bootstrap or config.kafka_bootstrap()
        self.partitions = partitions or config.partitions()
        self.config_dir = config.config_dir()
        self.settings = settings or config.deadlines()
        self.idle_after = idle_after
        # Call states: in local stores under `state_dir` (a slot of it this process holds,
        # see `claim_slot`), or in memory read back from the changelog on each assignment.
        self.state_dir = state_dir
        self.states: ChangelogStates | DiskStates
        if state_dir is None:
            self.states = ChangelogStates()
        else:
            self.slot = claim_slot(state_dir)
            self.states = DiskStates(self.slot.path, self.partitions)
        self.recovery = Recovery(
            bootstrap=self.bootstrap,
            partitions=self.partitions,
            settings=self.settings,
            states=self.states,
            alive=self._alive,
        )
        # Loaded by `run` beside the broker, group and changelog waits; see `_runtime`.
        self.loading: asyncio.Future[RefDataHolder]
        self.refdata: RefDataHolder
        self.runtime: WorkerRuntime
        self.max_records = max_records
        self.limit = max(1, max_records // RAMP_FROM)  # of the next cycle: see RAMP_FROM
        self.watchdog = CommitWatchdog(stall_s=self.env.stall_s)
        self.lock = asyncio.Lock()
        self.held: set[int] = set()  # partitions whose states are in memory and current
        # Partitions whose messages may be processed now: between a revocation and the end of
        # the next assignment's recovery, none (see `cycle`).
        self.ready: set[int] = set()
        self.position: dict[TP, int] = {}  # next offset to process, per owned topic-partition
        self.rebalances = 0  # listener calls so far (`fetch_evenly`)
        self.stopping = asyncio.Event()
        # Last time the processing loop or a recovery made progress: the watchdog restarts
        # a worker whose loop is stuck (a hang is worse than a crash: nothing recovers it).
        self.alive_at = time.monotonic()
        self.gc = GcPolicy()
        self.consumer: AIOKafkaConsumer
        self.producer: AIOKafkaProducer

    # -- life cycle --------------------------------------------------------------------------

    async def run(self) -> None:
        # The reference data is read and checked in a thread while the worker waits for the
        # broker, the group and the changelog (a production rate deck takes a second or more:
        # 45,000 rows 0.7 s). Nothing is rated before it is in force: the runtime that rates
        # exists only from then on, and `on_assigned` waits for it before re-sending outputs
        # in doubt and letting messages be processed.
        self.loading = asyncio.ensure_future(asyncio.to_thread(RefDataHolder, self.config_dir))
        try:
            await wait_for_broker(self.bootstrap)
            await ensure_topics_async(self.bootstrap, self.partitions)
        except BaseException:
            await asyncio.gather(self.loading, return_exceptions=True)
            raise
        self.producer = _producer(self.bootstrap)
        session_s = config.session_timeout(self.state_dir is not None)
        # With local stores, a static member: a restarted worker gets its partitions (and
        # their stores) back at once instead of after the session timeout (`membership`).
        self.instance = None
        if self.state_dir is not None:
            self.instance = instance_id(self.state_dir.name, self.slot.index)
        self.consumer = _consumer(
            self.bootstrap,
            instance=self.instance,
            session_s=session_s,
            max_records=self.max_records,
            partitions=self.partitions,
        )
        await self.producer.start()
        await self.consumer.start()
        self.consumer.subscribe(list(OWN_TOPICS), listener=RebalanceListener(self))
        self.alignment = TimeAlignment(
            CO_PARTITIONED,
            self.consumer.highwater,
            lambda tp: self.position.get((tp.topic, tp.partition)),
            self.consumer.pause,
            lambda *tps: self.consumer.resume(*set(tps) & self.consumer.assignment()),
            grace=self.env.align_grace_s,
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop, sig)
        loop.add_signal_handler(signal.SIGUSR1, dump_tasks)
        timers: list[asyncio.Task[None]] = []
        try:
            # Malformed reference data ends the worker here: there is no last good version.
            await self._runtime()
            timers = BackgroundJobs(self).start()
            await self._loop()
            if not self.stopping.is_set():
                raise RuntimeError("the processing loop ended without being asked to stop")
        finally:
            for task in timers:
                task.cancel()
            if self.instance is not None:  # a static member leaves only when asked to
                await leave(self.consumer, WORKER_GROUP, self.instance)
            await self.consumer.stop()  # leaves the group: the others take over at once
            await self.producer.stop()
            if isinstance(self.states, DiskStates):
                self.states.close()

    async def _runtime(self) -> WorkerRuntime:
        """The runtime, as soon as the reference data is loaded (`run`)."""
        refdata = await asyncio.shield(self.loading)
        if not hasattr(self, "runtime"):
            self.refdata = refdata
            self.runtime = WorkerRuntime(
                refdata, self.states, self.settings, self.partitions, self.idle_after
            )
        return self.runtime

    def _stop(self, sig: signal.Signals) -> None:
        log.warning("%s: finishing the cycle in progress, then leaving the group", sig.name)
        self.stopping.set()

    def _alive(self) -> None:
        """The processing loop, or a recovery, made progress (the loop watchdog's clock)."""
        self.alive_at = time.monotonic()

    async def _loop(self) -> None:
        time_aligned = self.env.time_aligned
        stopping = asyncio.ensure_future(self.stopping.wait())
        while not self.stopping.is_set():
            fetch = asyncio.ensure_future(
                fetch_evenly(self.consumer, self.limit, 200, lambda: self.rebalances)
            )
            await asyncio.wait({fetch, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not fetch.done():
                fetch.cancel()
                break
            batch = fetch.result()
            if time_aligned:
                ready = self.ready
                owned = [tp for tp in self.consumer.assignment() if tp.partition in ready]
                share = max(1, self.max_records // max(1, len(owned)))
                batch = in_topic_order(self.alignment.take(batch, owned, share, self.limit))
            if batch:
                async with self.lock:
                    try:
                        await self.cycle(batch)
                    except StoreCorrupt:
                        log.exception("a local state store is corrupt: restarting to rebuild it")
                        restart_in_place()
                self.gc.after_cycle()
                if any(tp.topic in CO_PARTITIONED for tp in batch):  # not for ticks alone
                    self.limit = min(self.max_records, 2 * self.limit)
            self.alive_at = time.monotonic()
        stopping.cancel()

    # -- one cycle ---------------------------------------------------------------------------

    async def cycle(self, batch: dict[TopicPartition, list[Any]]) -> None:
        """Process, make durable, commit: see the module docstring."""
        runtime, states = self.runtime, self.states
        outbox = Outbox(self.producer, lambda _: states.current)
        feed = Feed(runtime, outbox)
        offsets: dict[TopicPartition, int] = {}
        assigned = self.consumer.assignment()
        ready = self.ready
        for tp, records in batch.items():
            if tp.partition not in ready:
                # Fetched around a rebalance: the partition is being given up, or its states
                # are not read back yet (the fetcher starts on a new assignment before the
                # listener has recovered it). Processing now would decide on missing states -
                # or write states the next owner never reads. Read these messages again later.
                if tp in assigned:
                    self.consumer.seek(tp, records[0].offset)
                continue
            topic, partition = tp.topic, tp.partition
            states.current = partition
            feed.records(topic, partition, records)
            offsets[tp] = self.position[(topic, partition)] = records[-1].offset + 1
        marker = runtime.progress()
        if marker is not None:  # after this cycle's forwards, in each partition's batch
            for p in range(self.partitions):
                outbox.add(TOPIC_REPARTITION, p, None, marker, PROGRESS_HEADERS)
        encoded: dict[str, bytes] = {}  # the changelog's bytes are the stores' too
        for key, partition, state in states.changes():
            value = None
            if state is not None:
                value = encoded[key] = state_to_changelog(state)
            outbox.add(TOPIC_CHANGELOG, partition, key.encode(), value)
        try:
            ends = await outbox.send()
        except Exception:
            log.exception("producing a cycle's outputs failed: restarting this worker")
            restart_in_place()
        if feed.cdrs or feed.dead:
            metrics.record_products(Outcome(feed.cdrs, feed.dead))
        commit: dict[TopicPartition, Any] = dict(offsets)
        if isinstance(states, DiskStates):
            # The states go to the local stores with a checkpoint per partition processed,
            # and each commit carries the changelog offset this cycle's records end at: where
            # the records of cycles not (yet) committed begin (`pipeline.stream.checkpointing`).
            clock = runtime.engine.correlator.clock
            processed = {tp.partition for tp in offsets}
            checkpoints = cycle_checkpoints(
                states, processed, ends, self.position, self.partitions, clock
            )
            try:
                states.flush(checkpoints, encoded)
            except Exception:
                log.exception("writing the local state stores failed: restarting this worker")
                restart_in_place()
            commit = marked_commit(checkpoints, self.position)
        if commit:
            # Bounded: a commit waits for the group coordinator, and after a broker restart the
            # coordinator's rebalance may be waiting for this very cycle (the lock). Everything
            # the commit covers is durable, so failing to commit only means reading it again
            # (the next owner re-sends the outputs in doubt).
            try:
                await asyncio.wait_for(self.consumer.commit(commit), COMMIT_TIMEOUT_S)
            except Exception as exc:
                log.warning("commit failed (%r); the next owner re-reads from the last one", exc)
                if isinstance(exc.__cause__, (UnknownMemberIdError, IllegalGenerationError)):
                    # This worker was dropped from the group: others may have processed its
                    # partitions meanwhile. Nothing it holds is trusted: every partition of the
                    # next assignment is read back from the changelog.
                    self.held = set()
                    self.ready = set()

    # -- rebalances --------------------------------------------------------------------------

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        """Drop what we no longer own, bring the states of what is new to us up to the
        changelog, then re-send the outputs in doubt of the newly owned partitions."""
        owned = {tp.partition for tp in assigned if tp.topic in INPUT_TOPICS}
        commits = await known_commits(self.bootstrap)
        committed = {tp: offset for tp, (offset, _) in commits.items()}
        stale = stale_partitions(owned & self.held, committed, self.position)
        gone, new = self.held - owned, (owned - self.held) | stale
        doubtful = await self.recovery.recover(gone, new, commits)
        for p in new:
            for t in OWN_TOPICS:
                self.position[(t, p)] = committed.get((t, p), 0)
        try:
            runtime = await self._runtime()  # the reference data in force: nothing before
        except Exception:
            return  # refused: `run` ends the worker with the reason
        await self.recovery.resend(
            runtime, self.producer, owned=owned, committed=committed, new=new, doubtful=doubtful
        )
        self.held = self.ready = owned
        self.limit = max(1, self.max_records // RAMP_FROM)
        metrics.ASSIGNED.set(len(owned))
        self.watchdog.reset(time.monotonic())
        self.alive_at = time.monotonic()


def _producer(bootstrap: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=5,
        max_batch_size=512 * 1024,
        max_request_size=8 * 1024 * 1024,
        compression_type=config.compression(),
        request_timeout_ms=30_000,
    )


def _consumer(
    bootstrap: str, *, instance: str | None, session_s: float, max_records: int, partitions: int
) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=WORKER_GROUP,
        group_instance_id=instance,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        # A worker that died holds its partitions until the group notices: a restarted
        # one waits that long to join. With local stores a recovery reads a changelog
        # tail, off the event loop, so the heartbeat keeps going: 10 s by default. With
        # states in memory a recovery decodes every state, and shorter sessions than
        # 20 s expired during long ones on a busy 2-core box (a rebalance storm).
        session_timeout_ms=int(1000 * session_s),
        heartbeat_interval_ms=3_000,
        max_poll_records=max_records,
        partition_assignment_strategy=(ASSIGNOR,),
        max_partition_fetch_bytes=partition_fetch_bytes(partitions),
        fetch_max_bytes=FETCH_MAX_BYTES,
        # Under load, fewer and fuller fetches (the broker answers as soon as 256 KB are
        # there); when traffic is light, a fetch waits at most 20 ms for more.
        fetch_min_bytes=256 * 1024,
        fetch_max_wait_ms=20,
    )


def run_batch_worker(*, metrics_port: int | None = None, **kwargs: Any) -> None:
    """Run one batch worker process until it is stopped (SIGTERM/SIGINT)."""
    configure_logging()
    metrics.serve(metrics_port)
    asyncio.run(BatchWorker(**kwargs).run())
