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
"""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Awaitable, Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import IllegalGenerationError, UnknownMemberIdError

from pipeline import config, metrics
from pipeline.core.correlate import CallState, Deadlines
from pipeline.core.engine import Outcome
from pipeline.core.events import event_time
from pipeline.core.model import Source
from pipeline.core.partitioning import partition_for
from pipeline.core.refdata import RefDataHolder
from pipeline.kafka.membership import instance_id, leave
from pipeline.kafka.topics import (
    CO_PARTITIONED,
    INPUT_TOPICS,
    TOPIC_CHANGELOG,
    TOPIC_REPARTITION,
    TOPIC_TICKS,
    TP,
    WORKER_TOPICS,
    ensure_topics_async,
)
from pipeline.logs import configure_logging, dump_tasks
from pipeline.state.changelog import state_from_changelog, state_to_changelog
from pipeline.state.checkpointed import Checkpoint, DiskStates, StoreCorrupt, clock_us
from pipeline.state.restore import (
    APART_FROM,
    Restored,
    catch_up,
    catch_up_apart,
    records_behind,
)
from pipeline.state.slots import claim_slot
from pipeline.stream.alignment import TimeAlignment
from pipeline.stream.codec import (
    PROGRESS_HEADERS,
    is_progress,
    repartition_headers,
)
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
    REFDATA_POLL_S,
    TICK_INTERVAL_S,
    WATCHDOG_POLL_S,
    WorkerRuntime,
    check_commits,
    known_commits,
    reload_refdata,
    restart_in_place,
    tick_stamp,
    wait_for_broker,
)
from pipeline.stream.watchdog import CommitWatchdog

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_RECORDS = 20_000  # messages per cycle
# After an assignment the first cycle takes an eighth of that, and each next one twice as many:
# its outputs and commit come after 2,500 messages instead of 20,000 (`bench/startup_bench.py`).
RAMP_FROM = 8
GAUGE_POLL_S = 5.0
# Partition p of every input topic (and of the ticks) must go to the same worker: a call's
# three events are on partition p of three topics. The range assignor lays out each topic's
# partitions in the same member order, so it co-partitions topics of equal partition counts;
# aiokafka's default (round robin over all topic-partitions) does not once the worker count
# does not divide the partition count.
ASSIGNOR = RangePartitionAssignor
OWN_TOPICS = WORKER_TOPICS
COMMIT_TIMEOUT_S = 10.0
RESEND_CHUNK = 2_000  # states whose outputs are re-sent between two turns of the event loop
ALIVE_EVERY_S = 5.0  # a long recovery step tells the loop watchdog it is alive this often
RESTORE_YIELD_EVERY = 5_000  # states decoded between two turns of the event loop


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
        self.producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            linger_ms=5,
            max_batch_size=512 * 1024,
            max_request_size=8 * 1024 * 1024,
            compression_type=config.compression(),
            request_timeout_ms=30_000,
        )
        session_s = config.session_timeout(self.state_dir is not None)
        # With local stores, a static member: a restarted worker gets its partitions (and
        # their stores) back at once instead of after the session timeout (`membership`).
        self.instance = None
        if self.state_dir is not None:
            self.instance = instance_id(self.state_dir.name, self.slot.index)
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=WORKER_GROUP,
            group_instance_id=self.instance,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # A worker that died holds its partitions until the group notices: a restarted
            # one waits that long to join. With local stores a recovery reads a changelog
            # tail, off the event loop, so the heartbeat keeps going: 10 s by default. With
            # states in memory a recovery decodes every state, and shorter sessions than
            # 20 s expired during long ones on a busy 2-core box (a rebalance storm).
            session_timeout_ms=int(1000 * session_s),
            heartbeat_interval_ms=3_000,
            max_poll_records=self.max_records,
            partition_assignment_strategy=(ASSIGNOR,),
            max_partition_fetch_bytes=partition_fetch_bytes(self.partitions),
            fetch_max_bytes=FETCH_MAX_BYTES,
            # Under load, fewer and fuller fetches (the broker answers as soon as 256 KB are
            # there); when traffic is light, a fetch waits at most 20 ms for more.
            fetch_min_bytes=256 * 1024,
            fetch_max_wait_ms=20,
        )
        await self.producer.start()
        await self.consumer.start()
        self.consumer.subscribe(list(OWN_TOPICS), listener=_Listener(self))
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
            timers = [
                asyncio.create_task(self._every(TICK_INTERVAL_S, self._tick)),
                asyncio.create_task(self._every(REFDATA_POLL_S, self._reload_refdata)),
                asyncio.create_task(self._every(WATCHDOG_POLL_S, self._watch_commits)),
                asyncio.create_task(self._every(GAUGE_POLL_S, self._gauges)),
            ]
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
        engine = runtime.engine
        feed, misrouted = engine.feed, runtime.misrouted_many
        outbox = Outbox(self.producer, lambda _: states.current)
        offsets: dict[TopicPartition, int] = {}
        cdrs: list[Any] = []
        dead: list[Any] = []
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
            if topic == TOPIC_TICKS:
                for record in records:
                    outcome = runtime.on_tick(partition, Source(topic, partition, record.offset))
                    if outcome.cdrs or outcome.dead:
                        outbox.add_outcome(outcome)
                        cdrs += outcome.cdrs
                        dead += outcome.dead
            elif topic == TOPIC_REPARTITION:
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
            else:
                forwarded = 0
                newest = None  # event time of the messages read, processed or forwarded
                elsewhere = misrouted([record.value for record in records], partition)
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
        if cdrs or dead:
            metrics.record_products(Outcome(cdrs, dead))
        commit: dict[TopicPartition, Any] = dict(offsets)
        if isinstance(states, DiskStates):
            # Each commit carries the changelog offset this cycle's records end at: where
            # the records of cycles not (yet) committed begin (`pipeline.state.restore`).
            # Every input topic of a partition carries it, also those without messages this
            # cycle (at their position): the mark of a topic idle for hours would make a
            # restart read everything written since.
            marks = self._checkpoint(states, offsets, ends, encoded)
            commit = {
                TopicPartition(t, p): (self.position[(t, p)], str(mark))
                for p, mark in marks.items()
                for t in OWN_TOPICS
                if (t, p) in self.position
            }
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

    def _checkpoint(
        self,
        states: DiskStates,
        offsets: Mapping[TopicPartition, int],
        ends: Mapping[tuple[str, int], int],
        encoded: Mapping[str, bytes],
    ) -> dict[int, int]:
        """Write the cycle's states to the local stores with a checkpoint per partition
        processed; returns each one's changelog offset."""
        clock = self.runtime.engine.correlator.clock
        checkpoints: dict[int, Checkpoint] = {}
        for p in {tp.partition for tp in offsets}:
            previous = states.stores[p].checkpoint
            changelog = ends.get((TOPIC_CHANGELOG, p), previous.changelog if previous else 0)
            inputs = {t: self.position[(t, p)] for t in OWN_TOPICS if (t, p) in self.position}
            checkpoints[p] = Checkpoint(self.partitions, changelog, inputs, clock_us(clock(p)))
        try:
            states.flush(checkpoints, encoded)
        except Exception:
            log.exception("writing the local state stores failed: restarting this worker")
            restart_in_place()
        return {p: cp.changelog for p, cp in checkpoints.items()}

    # -- rebalances --------------------------------------------------------------------------

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        """Drop what we no longer own, bring the states of what is new to us up to the
        changelog, then re-send the outputs in doubt of the newly owned partitions."""
        owned = {tp.partition for tp in assigned if tp.topic in INPUT_TOPICS}
        commits = await known_commits(self.bootstrap)
        committed = {tp: offset for tp, (offset, _) in commits.items()}
        stale = stale_partitions(owned & self.held, committed, self.position)
        gone, new = self.held - owned, (owned - self.held) | stale
        doubtful: list[CallState] = []
        if isinstance(self.states, DiskStates):
            doubtful = await self._recover(self.states, gone, new, commits)
        else:
            self.states.drop(gone | new)
            if new:
                started = time.monotonic()
                restored = await self._restore(new)
                log.info(
                    "read %d call states of partitions %s in %.1fs",
                    restored,
                    sorted(new),
                    time.monotonic() - started,
                )
        for p in new:
            for t in OWN_TOPICS:
                self.position[(t, p)] = committed.get((t, p), 0)
        try:
            runtime = await self._runtime()  # the reference data in force: nothing before
        except Exception:
            return  # refused: `run` ends the worker with the reason
        if isinstance(self.states, DiskStates):
            stores = self.states.stores
            clocks = {p: cp.clock_times() for p in owned if (cp := stores[p].checkpoint)}
            outcomes = [runtime.reassign(owned, clocks, doubtful[:RESEND_CHUNK])]
        else:
            outcomes = [runtime.on_assigned(owned, committed, in_doubt=new)]
        outbox = Outbox(self.producer, lambda call_id: partition_for(call_id, self.partitions))
        for n, outcome in enumerate(outcomes, 1):
            outbox.add_outcome(outcome)
            metrics.RESENT.inc(len(outcome.cdrs) + len(outcome.dead))
            rest = doubtful[n * RESEND_CHUNK : (n + 1) * RESEND_CHUNK]
            if rest:  # in pieces: the group heartbeat runs on this loop too
                await asyncio.sleep(0)
                self.alive_at = time.monotonic()
                outcomes.append(runtime.engine.resend(rest))
        if outbox.count:
            await outbox.send()
        self.held = self.ready = owned
        self.limit = max(1, self.max_records // RAMP_FROM)
        metrics.ASSIGNED.set(len(owned))
        self.watchdog.reset(time.monotonic())
        self.alive_at = time.monotonic()

    async def _recover(
        self,
        states: DiskStates,
        gone: set[int],
        new: set[int],
        commits: Mapping[TP, tuple[int, str]],
    ) -> list[CallState]:
        """Close the stores of partitions given up; open those of the new ones and bring
        each up to the changelog (from its checkpoint, or rebuilt; several far behind, each
        in a process of its own). Returns the states whose outputs are in doubt."""
        states.detach(gone | new)
        apart: dict[int, Restored] = {}
        if len(new) > 1:
            stores = [states.open_store(p) for p in sorted(new)]
            behind = await self._alive_while(
                asyncio.to_thread(records_behind, self.bootstrap, stores)
            )
            far = sorted(p for p, n in behind.items() if n >= APART_FROM)
            if len(far) > 1:
                states.detach(far)
                apart = await self._catch_up_apart(states, far, commits)
        doubtful: list[CallState] = []
        for p in sorted(new):
            store = states.open_store(p)
            done = await self._alive_while(
                asyncio.to_thread(
                    catch_up, self.bootstrap, store, self.settings, commits, OWN_TOPICS
                )
            )
            states.attach(p)
            doubtful += done.doubtful
            self.alive_at = time.monotonic()
            first = apart.get(p)
            if first is not None:  # what the process apart did, and then this tail
                done.read += first.read
                done.applied += first.applied
                done.seconds += first.seconds
                done.rebuilt, done.problem = first.rebuilt, first.problem
            log.warning(
                "partition %d: %s %d changelog records (%d applied) in %.2fs%s; %d in doubt",
                p,
                "rebuilt from" if done.rebuilt else "caught up with",
                done.read,
                done.applied,
                done.seconds,
                f" (the local store {done.problem})" if done.problem else "",
                len(done.doubtful),
            )
            metrics.STATE_RECOVERED.labels("rebuild" if done.rebuilt else "checkpoint").inc(
                done.applied
            )
        return doubtful

    async def _catch_up_apart(
        self, states: DiskStates, partitions: list[int], commits: Mapping[TP, tuple[int, str]]
    ) -> dict[int, Restored]:
        loop = asyncio.get_running_loop()
        processes = min(len(partitions), os.cpu_count() or 1)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(processes, mp_context=context) as pool:
            done = await self._alive_while(
                asyncio.gather(
                    *(
                        loop.run_in_executor(
                            pool,
                            catch_up_apart,
                            self.bootstrap,
                            states.root,
                            p,
                            self.partitions,
                            self.settings,
                            dict(commits),
                            OWN_TOPICS,
                        )
                        for p in partitions
                    )
                )
            )
        return dict(zip(partitions, done, strict=True))

    async def _alive_while(self, work: Awaitable[T]) -> T:
        """Await a recovery step, telling the loop watchdog (`alive_at`) that the worker is
        not stuck meanwhile: a rebuild of millions of states takes minutes."""
        task = asyncio.ensure_future(work)
        while True:
            done, _ = await asyncio.wait({task}, timeout=ALIVE_EVERY_S)
            self.alive_at = time.monotonic()
            if done:
                return task.result()

    async def _restore(self, partitions: set[int]) -> int:
        """Read the changelog partitions to their current end into the states; returns how
        many records were read.

        Only each call's last record is decoded: until compaction catches up, the changelog
        holds every state a call went through (two to three per call, and a tombstone), and
        decoding them was most of a recovery's time."""
        reader = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # Small fetches, and a pause after each: decoding a big one would keep the event
            # loop (and the group heartbeat) waiting for seconds.
            max_partition_fetch_bytes=1024 * 1024,
            fetch_max_bytes=4 * 1024 * 1024,
        )
        await reader.start()
        count = 0
        try:
            tps = [TopicPartition(TOPIC_CHANGELOG, p) for p in sorted(partitions)]
            reader.assign(tps)
            ends = await reader.end_offsets(tps)
            # Explicit offsets: `seek_to_beginning` right after `assign` raced with the
            # consumer's own position reset and left some partitions at their end - a
            # recovery that read nothing (found by the reliability suite: lost calls).
            begins = await reader.beginning_offsets(tps)
            for tp in tps:
                reader.seek(tp, begins[tp])
            todo = {tp for tp in tps if ends[tp] > begins[tp]}
            last: dict[bytes, tuple[int, bytes | None]] = {}  # call id -> its last record
            while todo:
                for tp, records in (await reader.getmany(*todo, timeout_ms=1000)).items():
                    partition = tp.partition
                    for record in records:
                        last[record.key] = (partition, record.value)
                    count += len(records)
                self.alive_at = time.monotonic()
                await asyncio.sleep(0)
                for tp in list(todo):
                    if await reader.position(tp) >= ends[tp]:
                        todo.discard(tp)
        finally:
            await reader.stop()
        restore = self.states.restore
        # Decoding makes no reference cycles, and the collector's passes would only rescan
        # the states decoded so far (a good part of a recovery's CPU).
        collecting = gc.isenabled()
        gc.disable()
        try:
            for n, (key, (partition, value)) in enumerate(last.items(), 1):
                state = None if value is None else state_from_changelog(value)
                restore(key.decode(), partition, state)
                if n % RESTORE_YIELD_EVERY == 0:  # the group heartbeat runs on this loop too
                    self.alive_at = time.monotonic()
                    await asyncio.sleep(0)
        finally:
            if collecting:
                gc.enable()
        return count

    # -- timers ------------------------------------------------------------------------------

    async def _every(self, seconds: float, job: Any) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await asyncio.wait_for(job(), max(30.0, 3 * seconds))
            except Exception:
                log.exception("%s failed", job.__name__)

    async def _tick(self) -> None:
        """A tick per owned partition into `cdrpipe.ticks` (co-partitioned with the inputs),
        so that an idle partition's event time still moves, inside the processing cycle."""
        stamp = tick_stamp()
        for p in sorted(self.runtime.assigned):
            await self.producer.send(TOPIC_TICKS, stamp, key=b"tick", partition=p)

    async def _reload_refdata(self) -> None:
        await asyncio.to_thread(reload_refdata, self.refdata)

    async def _watch_commits(self) -> None:
        stuck = time.monotonic() - self.alive_at
        if stuck > self.watchdog.stall_s:
            log.error("processing loop stuck for %.0fs: restarting this worker", stuck)
            restart_in_place()
        if not self.runtime.assigned or not self.ready:  # none, or a recovery under way
            self.watchdog.reset(time.monotonic())
            return
        ends: dict[TP, int] = {}
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            if high is not None:
                ends[(tp.topic, tp.partition)] = high
        await check_commits(self.watchdog, self.bootstrap, ends)

    async def _gauges(self) -> None:
        states = self.states
        if isinstance(states, DiskStates):
            metrics.OPEN_CALLS.set(states.open_count())
        else:
            metrics.OPEN_CALLS.set(sum(1 for s in states.data.values() if not s.settled))


def stale_partitions(
    kept: set[int], committed: Mapping[TP, int], position: Mapping[TP, int]
) -> set[int]:
    """Partitions we kept through a rebalance whose states are nevertheless out of date.

    Someone else may have processed a partition we hold in memory: this worker stalled past
    its session timeout and was left out of a generation, and got the partition back. The
    group then committed beyond what we processed (`position`), and our states are stale.
    """
    return {
        p
        for p in kept
        if any(committed.get((t, p), 0) > position.get((t, p), 0) for t in OWN_TOPICS)
    }


class _Listener(ConsumerRebalanceListener):
    """Eager rebalance: a cycle in progress finishes before partitions are given up, and no
    message is processed from then until the new assignment's states are recovered."""

    def __init__(self, worker: BatchWorker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self.worker.rebalances += 1
        async with self.worker.lock:  # the cycle in progress finishes first
            self.worker.ready = set()
            self.worker.alignment.forget()

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.worker.rebalances += 1
        async with self.worker.lock:
            await self.worker.on_assigned(set(assigned))


def run_batch_worker(*, metrics_port: int | None = None, **kwargs: Any) -> None:
    """Run one batch worker process until it is stopped (SIGTERM/SIGINT)."""
    configure_logging()
    metrics.serve(metrics_port)
    asyncio.run(BatchWorker(**kwargs).run())
