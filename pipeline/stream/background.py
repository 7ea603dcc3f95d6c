"""A batch worker's periodic jobs, each on a timer of its own beside the processing loop:
ticks for idle partitions, reference data reloads, the commit and loop watchdogs, gauges.

They run between cycles on the same event loop and only read what the worker exposes
(`Watched`); none of them is part of a cycle, so they are kept apart from it
(`pipeline.stream.batch`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from pipeline import metrics
from pipeline.core.refdata import RefDataHolder
from pipeline.kafka.topics import TOPIC_TICKS, TP
from pipeline.state.checkpointed import DiskStates
from pipeline.stream.memory_states import ChangelogStates
from pipeline.stream.runtime import (
    REFDATA_POLL_S,
    TICK_INTERVAL_S,
    WATCHDOG_POLL_S,
    WorkerRuntime,
    check_commits,
    reload_refdata,
    restart_in_place,
    tick_stamp,
)
from pipeline.stream.watchdog import CommitWatchdog

__all__ = ["GAUGE_POLL_S", "BackgroundJobs", "Watched"]

log = logging.getLogger(__name__)

GAUGE_POLL_S = 5.0


class Watched(Protocol):
    """What the jobs read of the worker they run beside."""

    bootstrap: str
    producer: AIOKafkaProducer
    consumer: AIOKafkaConsumer
    runtime: WorkerRuntime
    refdata: RefDataHolder
    states: ChangelogStates | DiskStates
    watchdog: CommitWatchdog
    alive_at: float  # last time the processing loop or a recovery made progress
    ready: set[int]  # partitions whose messages may be processed now


class BackgroundJobs:
    """The periodic jobs of one worker; `start` once its runtime exists."""

    def __init__(self, worker: Watched) -> None:
        self.worker = worker

    def start(self) -> list[asyncio.Task[None]]:
        """One task per job, to be cancelled when the worker stops."""
        return [
            asyncio.create_task(self._every(TICK_INTERVAL_S, self._tick)),
            asyncio.create_task(self._every(REFDATA_POLL_S, self._reload_refdata)),
            asyncio.create_task(self._every(WATCHDOG_POLL_S, self._watch_commits)),
            asyncio.create_task(self._every(GAUGE_POLL_S, self._gauges)),
        ]

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
        for p in sorted(self.worker.runtime.assigned):
            await self.worker.producer.send(TOPIC_TICKS, stamp, key=b"tick", partition=p)

    async def _reload_refdata(self) -> None:
        await asyncio.to_thread(reload_refdata, self.worker.refdata)

    async def _watch_commits(self) -> None:
        worker = self.worker
        stuck = time.monotonic() - worker.alive_at
        if stuck > worker.watchdog.stall_s:
            log.error("processing loop stuck for %.0fs: restarting this worker", stuck)
            restart_in_place()
        if not worker.runtime.assigned or not worker.ready:  # none, or a recovery under way
            worker.watchdog.reset(time.monotonic())
            return
        ends: dict[TP, int] = {}
        for tp in worker.consumer.assignment():
            high = worker.consumer.highwater(tp)
            if high is not None:
                ends[(tp.topic, tp.partition)] = high
        await check_commits(worker.watchdog, worker.bootstrap, ends)

    async def _gauges(self) -> None:
        states = self.worker.states
        if isinstance(states, DiskStates):
            metrics.OPEN_CALLS.set(states.open_count())
        else:
            metrics.OPEN_CALLS.set(sum(1 for s in states.data.values() if not s.settled))
