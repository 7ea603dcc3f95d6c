"""A batch worker's side of a rebalance: partitions owned together (`ASSIGNOR`), the listener
that holds the cycle lock while the group moves partitions, and the `Recovery` of newly owned
partitions: their call states read back from the changelog, the outputs a crash may have
lost sent again. (`BatchWorker.on_assigned` decides which partitions that is.)

A recovery runs inside the listener and may take minutes; all the while it has to keep the
group heartbeat and the loop watchdog fed. None of it is on a cycle's path, so it is kept
apart from the cycle (`pipeline.stream.batch`).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Protocol, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor

from pipeline import metrics
from pipeline.core.correlate import CallState, Deadlines
from pipeline.core.partitioning import partition_for
from pipeline.kafka.topics import TOPIC_CHANGELOG, TP, WORKER_TOPICS
from pipeline.state.changelog import state_from_changelog
from pipeline.state.checkpointed import DiskStates
from pipeline.state.restore import APART_FROM, Restored, catch_up, catch_up_apart, records_behind
from pipeline.stream.alignment import TimeAlignment
from pipeline.stream.memory_states import ChangelogStates
from pipeline.stream.outbox import Outbox
from pipeline.stream.runtime import WorkerRuntime

__all__ = [
    "ALIVE_EVERY_S",
    "ASSIGNOR",
    "RESEND_CHUNK",
    "RESTORE_YIELD_EVERY",
    "Rebalanced",
    "RebalanceListener",
    "Recovery",
    "stale_partitions",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

# Partition p of every input topic (and of the ticks) must go to the same worker: a call's
# three events are on partition p of three topics. The range assignor lays out each topic's
# partitions in the same member order, so it co-partitions topics of equal partition counts;
# aiokafka's default (round robin over all topic-partitions) does not once the worker count
# does not divide the partition count.
ASSIGNOR = RangePartitionAssignor
RESEND_CHUNK = 2_000  # states whose outputs are re-sent between two turns of the event loop
ALIVE_EVERY_S = 5.0  # a long recovery step tells the loop watchdog it is alive this often
RESTORE_YIELD_EVERY = 5_000  # states decoded between two turns of the event loop


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
        if any(committed.get((t, p), 0) > position.get((t, p), 0) for t in WORKER_TOPICS)
    }


class Recovery:
    """Brings the call states of newly owned partitions up to the changelog and re-sends the
    outputs in doubt; `alive` is called whenever a long step made progress (the worker's loop
    watchdog)."""

    def __init__(
        self,
        *,
        bootstrap: str,
        partitions: int,
        settings: Deadlines,
        states: ChangelogStates | DiskStates,
        alive: Callable[[], None],
    ) -> None:
        self.bootstrap = bootstrap
        self.partitions = partitions
        self.settings = settings
        self.states = states
        self.alive = alive

    async def recover(
        self, gone: set[int], new: set[int], commits: Mapping[TP, tuple[int, str]]
    ) -> list[CallState]:
        """Forget the states of the partitions `gone`, bring those of `new` up to the
        changelog; returns the states whose outputs are in doubt (local stores only: in
        memory, the runtime finds them itself)."""
        states = self.states
        if isinstance(states, DiskStates):
            return await self._recover(states, gone, new, commits)
        states.drop(gone | new)
        if new:
            started = time.monotonic()
            restored = await self.restore(states, new)
            log.info(
                "read %d call states of partitions %s in %.1fs",
                restored,
                sorted(new),
                time.monotonic() - started,
            )
        return []

    async def resend(
        self,
        runtime: WorkerRuntime,
        producer: AIOKafkaProducer,
        *,
        owned: set[int],
        committed: Mapping[TP, int],
        new: set[int],
        doubtful: list[CallState],
    ) -> None:
        """Send again the outputs in doubt of the partitions now `owned`: of the `doubtful`
        states (local stores), or of the `new` partitions' states past their `committed`
        offsets (in memory)."""
        if isinstance(self.states, DiskStates):
            stores = self.states.stores
            clocks = {p: cp.clock_times() for p in owned if (cp := stores[p].checkpoint)}
            outcomes = [runtime.reassign(owned, clocks, doubtful[:RESEND_CHUNK])]
        else:
            outcomes = [runtime.on_assigned(owned, committed, in_doubt=new)]
        outbox = Outbox(producer, lambda call_id: partition_for(call_id, self.partitions))
        for n, outcome in enumerate(outcomes, 1):
            outbox.add_outcome(outcome)
            metrics.RESENT.inc(len(outcome.cdrs) + len(outcome.dead))
            rest = doubtful[n * RESEND_CHUNK : (n + 1) * RESEND_CHUNK]
            if rest:  # in pieces: the group heartbeat runs on this loop too
                await asyncio.sleep(0)
                self.alive()
                outcomes.append(runtime.engine.resend(rest))
        if outbox.count:
            await outbox.send()

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
            behind = await self.alive_while(
                asyncio.to_thread(records_behind, self.bootstrap, stores)
            )
            far = sorted(p for p, n in behind.items() if n >= APART_FROM)
            if len(far) > 1:
                states.detach(far)
                apart = await self._catch_up_apart(states, far, commits)
        doubtful: list[CallState] = []
        for p in sorted(new):
            store = states.open_store(p)
            done = await self.alive_while(
                asyncio.to_thread(
                    catch_up, self.bootstrap, store, self.settings, commits, WORKER_TOPICS
                )
            )
            states.attach(p)
            doubtful += done.doubtful
            self.alive()
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
            done = await self.alive_while(
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
                            WORKER_TOPICS,
                        )
                        for p in partitions
                    )
                )
            )
        return dict(zip(partitions, done, strict=True))

    async def alive_while(self, work: Awaitable[T]) -> T:
        """Await a recovery step, telling the loop watchdog (`alive`) that the worker is not
        stuck meanwhile: a rebuild of millions of states takes minutes."""
        task = asyncio.ensure_future(work)
        while True:
            done, _ = await asyncio.wait({task}, timeout=ALIVE_EVERY_S)
            self.alive()
            if done:
                return task.result()

    async def restore(self, states: ChangelogStates, partitions: set[int]) -> int:
        """Read the changelog partitions to their current end into `states`; returns how
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
                self.alive()
                await asyncio.sleep(0)
                for tp in list(todo):
                    if await reader.position(tp) >= ends[tp]:
                        todo.discard(tp)
        finally:
            await reader.stop()
        restore = states.restore
        # Decoding makes no reference cycles, and the collector's passes would only rescan
        # the states decoded so far (a good part of a recovery's CPU).
        collecting = gc.isenabled()
        gc.disable()
        try:
            for n, (key, (partition, value)) in enumerate(last.items(), 1):
                state = None if value is None else state_from_changelog(value)
                restore(key.decode(), partition, state)
                if n % RESTORE_YIELD_EVERY == 0:  # the group heartbeat runs on this loop too
                    self.alive()
                    await asyncio.sleep(0)
        finally:
            if collecting:
                gc.enable()
        return count


class Rebalanced(Protocol):
    """What the rebalance listener needs of its worker."""

    rebalances: int
    lock: asyncio.Lock
    ready: set[int]
    alignment: TimeAlignment

    async def on_assigned(self, assigned: set[TopicPartition]) -> None: ...


class RebalanceListener(ConsumerRebalanceListener):
    """Eager rebalance: a cycle in progress finishes before partitions are given up, and no
    message is processed from then until the new assignment's states are recovered."""

    def __init__(self, worker: Rebalanced) -> None:
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
