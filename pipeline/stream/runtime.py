"""What both worker engines (the Faust agent and the batch worker) share around the `Engine`.

A worker owns some partitions, feeds their messages to the engine, moves idle partitions'
event time on with ticks, and after every (re)assignment re-sends the outputs a crash may
have lost. How messages arrive and how call states are made durable differ per engine
(`pipeline.stream.faust_engine`, `pipeline.stream.batch`); the decisions do not, so they live here.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import sys
import time
from collections.abc import Iterable, Mapping, MutableMapping
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError

from pipeline import config
from pipeline.core.correlate import CallState, Correlator, Deadlines, EventClock
from pipeline.core.engine import Engine, Outcome
from pipeline.core.model import Source
from pipeline.core.partitioning import CanonicalPartition, partition_for
from pipeline.core.refdata import RefDataError, RefDataHolder
from pipeline.kafka.topics import INPUT_TOPICS, TOPIC_REPARTITION, TP
from pipeline.stream.codec import (
    as_forwarded,
    forwarded_from,
    progress_from_bytes,
    progress_to_bytes,
)
from pipeline.stream.progress import WORKER_GROUP, committed_offsets, committed_with_metadata
from pipeline.stream.watchdog import CommitWatchdog

log = logging.getLogger(__name__)

# Timers of both engines.
TICK_INTERVAL_S = 1.0
REFDATA_POLL_S = 5.0
WATCHDOG_POLL_S = 10.0
PROGRESS_EVERY_S = 0.5  # how often a worker tells every partition how far its inputs got

_KIND_OF_TOPIC = {topic: topic.rsplit(".", 1)[1] for topic in INPUT_TOPICS}  # start, connect, end


def tick_stamp() -> bytes:
    """The value of a tick message (the wall clock, for whoever reads the ticks topic)."""
    return orjson.dumps({"wall": datetime.now(UTC).isoformat()})


def reload_refdata(refdata: RefDataHolder) -> None:
    """Pick up changed reference data; malformed data is refused and the last good kept."""
    try:
        refdata.reload_if_changed()
    except RefDataError as exc:
        log.error("reference data refused, keeping the last good version: %s", exc)


class States(MutableMapping[str, CallState]):
    """Call id -> CallState as a worker keeps them."""

    def refresh(self) -> None:
        """Drop anything derived from the durable copy (a decode cache) before a recovery
        reads every state."""


class WorkerRuntime:
    """Per-process state around the engine: idle clocks and partition bookkeeping."""

    def __init__(
        self,
        refdata: RefDataHolder,
        states: States,
        settings: Deadlines,
        partitions: int,
        idle_after: float,
    ) -> None:
        self.states = states
        self.settings = settings
        self.partitions = partitions
        self.idle_after = idle_after
        self.engine = Engine(refdata, states, settings, partitions)
        self.canonical = CanonicalPartition(partitions)
        self.last_event_wall: dict[int, float] = {}
        self.assigned: set[int] = set()
        # How far in event time the messages read off each owned input partition got, those
        # forwarded elsewhere included (`progress`).
        self.arrivals: dict[int, EventClock] = {}
        self.forwarded_at: dict[int, float] = {}  # input partition -> when it last forwarded
        self.reported: dict[int, datetime | None] = {}  # what the last marker said
        self.progress_at = 0.0

    def misrouted(self, value: bytes, partition: int) -> int | None:
        """The call's canonical partition if this input message arrived on another one (the
        worker forwards it there instead of processing it), else None."""
        canonical = self.canonical(value)
        return None if canonical is None or canonical == partition else canonical

    def misrouted_many(self, values: list[bytes], partition: int) -> list[int | None]:
        """`misrouted` of each message read from `partition`, hashed together."""
        return [None if p == partition else p for p in self.canonical.many(values)]

    def arrived(self, topic: str, partition: int, ts: datetime | None) -> None:
        """A message of event time `ts` was read off input `topic`'s `partition` (processed
        here or forwarded); None: it has no valid time."""
        if ts is not None:
            clock = self.arrivals.get(partition)
            if clock is None:
                clock = self.arrivals[partition] = EventClock()
            clock.saw(_KIND_OF_TOPIC[topic], ts)

    def forwarded(self, partition: int) -> None:
        """Messages read off input `partition` were just forwarded to other partitions."""
        self.forwarded_at[partition] = time.monotonic()

    def progress(self, force: bool = False) -> bytes | None:
        """A progress marker for every partition of the repartition topic, to follow the
        messages this worker forwarded (`Correlator.upstream`), at most every
        `PROGRESS_EVERY_S` unless `force`, while it forwards: for each owned input partition,
        the watermark of the messages read off it (processed here or forwarded), or None if
        it forwarded nothing within `idle_after` (nothing of it is on its way). Once this
        worker forwarded nothing for that long, one last marker of Nones, then silence: no
        marker traffic while every gateway is on murmur2, or none is sending."""
        now = time.monotonic()
        if not force and now - self.progress_at < PROGRESS_EVERY_S:
            return None
        report: dict[int, datetime | None] = {}
        for p in self.assigned:
            if now - self.forwarded_at.get(p, -math.inf) >= self.idle_after:
                report[p] = None
            else:
                clock = self.arrivals.get(p)
                if clock is not None and clock.watermark is not None:
                    report[p] = clock.watermark
        silent = all(v is None for v in report.values())
        if silent and all(v is None for v in self.reported.values()):
            return None  # nothing forwarded since the last marker said so (or ever)
        self.progress_at = now
        self.reported = report
        return progress_to_bytes(report)

    def on_progress(self, value: bytes, partition: int, offset: int) -> Outcome:
        """A progress marker read off the repartition topic (`progress`)."""
        trigger = Source(TOPIC_REPARTITION, partition, offset)
        cdrs: list = []
        dead: list = []
        for source, ts in progress_from_bytes(value).items():
            outcome = self.engine.upstream(partition, source, ts, trigger)
            cdrs += outcome.cdrs
            dead += outcome.dead
        return Outcome(cdrs, dead) if cdrs or dead else Outcome()

    def on_forwarded(self, value: bytes, partition: int, offset: int, headers: Any) -> Outcome:
        """A message of the repartition topic: processed as any input, and its dead letters
        point at where it was first read."""
        here = Source(TOPIC_REPARTITION, partition, offset)
        self.engine.correlator.expect_upstream(partition, self.partitions)
        outcome = self.on_message(value, TOPIC_REPARTITION, partition, offset)
        if outcome.dead:
            dead = as_forwarded(outcome.dead, here, forwarded_from(headers))
            outcome = Outcome(outcome.cdrs, dead)
        return outcome

    def on_message(self, value: bytes, topic: str, partition: int, offset: int) -> Outcome:
        self.last_event_wall[partition] = time.monotonic()
        return self.engine.feed(value, Source(topic, partition, offset), partition)

    def on_tick(self, partition: int, source: Source | None = None) -> Outcome:
        """Idle partition: let event time follow the wall clock from its last event (that
        of the partition's calls, and that of the messages read off it)."""
        last = self.last_event_wall.get(partition)
        if last is None:
            return Outcome()
        idle = time.monotonic() - last
        if idle < self.idle_after:
            return Outcome()
        self.last_event_wall[partition] = time.monotonic()
        arrivals = self.arrivals.get(partition)
        if arrivals is not None and arrivals.watermark is not None:
            arrivals.raise_to(arrivals.watermark + timedelta(seconds=idle))
        watermark = self.engine.correlator.watermark(partition)
        if watermark is None:
            return Outcome()
        return self.engine.advance(partition, watermark + timedelta(seconds=idle), source)

    def on_assigned(
        self,
        partitions: set[int],
        committed: Mapping[TP, int] | None = None,
        in_doubt: Iterable[int] | None = None,
    ) -> Outcome:
        """After a rebalance and state recovery: re-index deadlines of what we now own, and
        return the outputs that may have been lost.

        State writes and outputs travel as separate Kafka messages, so a crash can leave
        a state durable whose CDR or dead letters never reached Kafka. Offsets are
        committed only after the producer flushed, so exactly the outputs triggered by
        messages at or after the `committed` offset of their topic-partition are in
        doubt: those are sent again (the store keeps one row per call id and revision;
        dead letters carry their source offset, so a DLQ reader can drop repeats).
        `in_doubt` limits that to the partitions whose states were just recovered (a
        worker that kept a partition through the rebalance lost nothing of it); default:
        all of `partitions`.
        """
        committed = committed or {}
        doubt = set(partitions if in_doubt is None else in_doubt)
        self.states.refresh()
        correlator = Correlator(self.states, self.settings)
        by_partition: dict[int, list[str]] = {p: [] for p in partitions}
        doubtful: list[CallState] = []
        for call_id in self.states:
            p = partition_for(call_id, self.partitions)
            if p in by_partition:
                by_partition[p].append(call_id)
                if p not in doubt:
                    continue
                state = self.states[call_id]
                t = state.trigger
                if t is not None and t.offset >= committed.get((t.topic, t.partition), 0):
                    doubtful.append(state)
        for p, ids in by_partition.items():
            correlator.rebuild(p, ids)
        self._install(correlator, partitions)
        log.info(
            "assigned partitions %s with %d open or remembered calls; resending the output of %d",
            sorted(partitions),
            sum(len(v) for v in by_partition.values()),
            len(doubtful),
        )
        return self.engine.resend(doubtful)

    def _install(self, correlator: Correlator, partitions: set[int]) -> None:
        """The correlator of a new assignment, every partition's idle clock started now."""
        self.engine.correlator = correlator
        self.assigned = partitions
        now = time.monotonic()
        self.last_event_wall = {p: now for p in partitions}

    def reassign(
        self,
        partitions: set[int],
        clocks: Mapping[int, Mapping[str, datetime]],
        doubtful: list[CallState],
    ) -> Outcome:
        """`on_assigned` for states that keep their deadline index and clocks themselves
        (`pipeline.state.checkpointed.DiskStates`): nothing is read through, the states whose
        outputs are in doubt come from the recovery, and each partition's event time resumes
        from `clocks` (its checkpoint)."""
        deadlines = self.states.deadlines  # type: ignore[attr-defined]
        correlator = Correlator(self.states, self.settings, deadlines=deadlines)
        for p in sorted(partitions):
            correlator.set_clock(p, clocks.get(p, {}))
        self._install(correlator, partitions)
        log.info(
            "assigned partitions %s from their local stores; resending the output of %d",
            sorted(partitions),
            len(doubtful),
        )
        return self.engine.resend(doubtful)


async def _metadata(bootstrap: str) -> None:
    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        await client.bootstrap()
    finally:
        await client.close()


async def wait_for_broker(bootstrap: str, wait_s: float | None = None) -> None:
    """Return once the broker answers a metadata request; raise the last error after `wait_s`
    (`CDRPIPE_BROKER_WAIT_S`, 300 by default).

    A worker (re)started while the broker is down, during a broker restart, waits for it here
    instead of failing at once (aiokafka and Faust give up on the first refused bootstrap) and
    being restarted in a loop by its supervisor."""
    if wait_s is None:
        wait_s = config.environment().broker_wait_s
    deadline = time.monotonic() + wait_s
    delay = 0.5
    while True:
        try:
            await _metadata(bootstrap)
            return
        except (KafkaError, OSError) as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("broker %s not answering (%s); waiting for it", bootstrap, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def known_committed_offsets(bootstrap: str, wait_s: float = 60.0) -> dict[TP, int]:
    """The group's committed offsets, retried while the coordinator is not answering (after
    a broker restart it needs some seconds). Re-sending outputs in doubt (and the Faust
    worker's commit fence) start from them, so a guess is never good enough: if the broker
    does not answer within `wait_s`, the worker restarts and tries again."""
    commits = await known_commits(bootstrap, wait_s)
    return {tp: offset for tp, (offset, _) in commits.items()}


async def known_commits(bootstrap: str, wait_s: float = 60.0) -> dict[TP, tuple[int, str]]:
    """`known_committed_offsets` with the metadata committed beside each offset."""
    deadline = time.monotonic() + wait_s
    delay = 0.2
    while True:
        try:
            return await committed_with_metadata(bootstrap, WORKER_GROUP, strict=True)
        except Exception as exc:
            if time.monotonic() > deadline:
                log.error("committed offsets unavailable (%s): restarting this worker", exc)
                restart_in_place()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def check_commits(watchdog: CommitWatchdog, bootstrap: str, ends: Mapping[TP, int]) -> None:
    """Restart this worker if an owned partition with waiting messages (`ends`: its end
    offset) has not seen a commit for `watchdog.stall_s`. A broker that does not answer is
    no stall of ours."""
    try:
        committed = await committed_offsets(bootstrap, WORKER_GROUP, strict=True)
    except Exception:
        watchdog.reset(time.monotonic())
        return
    stalled = watchdog.check(committed, ends, time.monotonic())
    if stalled:
        log.error(
            "no commit for %.0fs on %s despite waiting messages: restarting this worker",
            watchdog.stall_s,
            sorted(stalled),
        )
        restart_in_place()


def restart_in_place() -> None:
    """Replace this process by a fresh worker with the same arguments (same pid, so
    supervisors see no exit). Like a crash, it is covered by at-least-once processing."""
    logging.shutdown()
    os.execv(sys.executable, [sys.executable, "-m", "pipeline.cli", *_ARGV])


_ARGV = list(sys.argv[1:])  # before Faust's command line handling sees them
