"""The input topics of a partition processed in time order, as Kafka Streams and quix-streams
align the inputs of a task by timestamp.

A worker fetches each topic-partition on its own, so during a catch-up one topic's fetched
messages can reach minutes further in time than another's: processed as fetched, most ends
would come before their connects, and each such call's CDR would be emitted, then revised.

`TimeAlignment` therefore lets a cycle process, per partition, only the fetched messages up to
the partition's *horizon*: the oldest of the newest timestamps fetched from each of its topics.
A topic with more waiting on the broker bounds it as long as that lasts (with nothing fetched
yet, by the last message taken of it); a caught-up topic, whose next message may be on its way,
for at most a grace period (Kafka Streams' `max.task.idle.ms`). A topic-partition is in time
order, give or take a gateway's clock, so everything at or before the horizon is in hand, and a
call's events within it are processed start, connect, end (the cycle's topic order). What lies
beyond is kept in memory, not read again: a topic-partition holding a full share is paused, so
the fetcher turns to the topics that are behind (Kafka Streams' record queues; putting messages
back with a seek instead made two workers re-fetch in turn). The topic that sets the horizon is
always taken whole, so a partition never stalls.

Nothing kept is committed: a worker's commits and checkpoints stop at what it processed, and a
rebalance simply forgets what is kept (the new assignment reads on from the commits).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Iterable
from typing import Any

from aiokafka import TopicPartition

__all__ = ["TimeAlignment"]


class TimeAlignment:
    """Fetched messages of the aligned topics, released partition by partition in time order.

    `highwater(tp)` is the offset after the last message on the broker (None: unknown yet),
    `position(tp)` the next offset to process (None: unknown), `pause` and `resume` those of
    the consumer. Messages held back only by a caught-up topic wait at most `grace` seconds
    (Kafka Streams' `max.task.idle.ms`): its next message may be on its way, or never come."""

    def __init__(
        self,
        topics: Collection[str],
        highwater: Callable[[TopicPartition], int | None],
        position: Callable[[TopicPartition], int | None],
        pause: Callable[..., None],
        resume: Callable[..., None],
        grace: float = 0.3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.topics = frozenset(topics)
        self.highwater = highwater
        self.position = position
        self.pause = pause
        self.resume = resume
        self.kept: dict[TopicPartition, list[Any]] = {}  # fetched, beyond the horizon
        self.fetched_to: dict[TopicPartition, int] = {}  # offset after the last fetched
        self.newest: dict[TopicPartition, int] = {}  # timestamp of the last message taken
        self.paused: set[TopicPartition] = set()
        self.grace = grace
        self.clock = clock
        self.waiting: dict[int, float] = {}  # partition -> since when a caught-up topic holds it

    def forget(self) -> None:
        """A rebalance: the next assignment reads on from the commits, unpaused."""
        self.kept.clear()
        self.fetched_to.clear()
        self.newest.clear()
        self.paused.clear()
        self.waiting.clear()

    def take(
        self,
        batch: dict[TopicPartition, list[Any]],
        owned: Iterable[TopicPartition],
        share: int,
        most: int | None = None,
    ) -> dict[TopicPartition, list[Any]]:
        """`batch` (just fetched) with what was kept, cut at each partition's horizon;
        messages of other topics or partitions pass as they are. `owned` are the aligned
        topic-partitions to consider (those whose partition may be processed now); one holding
        `share` messages or more beyond the horizon is paused until it is below again. At
        most `most` aligned messages are released (a cycle's size): then each partition's
        horizon comes down to its share's newest, so the cut stays one in time."""
        owned = [tp for tp in owned if tp.topic in self.topics]
        aligned = set(owned)
        out: dict[TopicPartition, list[Any]] = {}
        pending: dict[TopicPartition, list[Any]] = {}
        for tp, records in batch.items():
            if tp not in aligned:
                out[tp] = records
                continue
            self.fetched_to[tp] = records[-1].offset + 1
            kept = self.kept.pop(tp, None)
            pending[tp] = kept + records if kept else records
        for tp, kept in self.kept.items():
            if tp in aligned:
                pending[tp] = kept
        self.kept = {}
        horizon = self._horizons(owned, pending)
        if most is not None:
            self._at_most(most, pending, horizon)
        held: set[int] = set()
        for tp, records in pending.items():
            limit = horizon.get(tp.partition)
            if limit is not None:
                cut = len(records)
                while cut and records[cut - 1].timestamp > limit:
                    cut -= 1
                if cut < len(records):
                    self.kept[tp] = records[cut:]
                    records = records[:cut]
                    held.add(tp.partition)
            if records:
                out[tp] = records
                self.newest[tp] = records[-1].timestamp
        for p in list(self.waiting):
            if p not in held:
                del self.waiting[p]
        full = {tp for tp, kept in self.kept.items() if len(kept) >= share}
        if full - self.paused:
            self.pause(*(full - self.paused))
        if self.paused - full:
            self.resume(*(self.paused - full))
        self.paused = full
        return out

    @staticmethod
    def _at_most(
        most: int, pending: dict[TopicPartition, list[Any]], horizon: dict[int, float]
    ) -> None:
        """Lower the horizons so that about `most` messages are released, evenly by
        partition."""
        stamps: dict[int, list[float]] = {}
        for tp, records in pending.items():
            limit = horizon.get(tp.partition, math.inf)
            stamps.setdefault(tp.partition, []).extend(
                r.timestamp for r in records if r.timestamp <= limit
            )
        if sum(map(len, stamps.values())) <= most:
            return
        cap = max(1, most // len(stamps))
        for p, times in stamps.items():
            if len(times) > cap:
                times.sort()
                cut = cap
                while cut > 1 and times[cut - 1] == times[cut]:  # ties stay together
                    cut -= 1
                horizon[p] = min(horizon.get(p, math.inf), times[cut - 1])

    def _horizons(
        self, owned: Iterable[TopicPartition], pending: dict[TopicPartition, list[Any]]
    ) -> dict[int, float]:
        """Each partition's horizon: the oldest bound of its topics that may have older
        messages than those in hand: its last message fetched (or taken). That of a topic with
        more waiting on the broker holds; that of a caught-up one, whose next message may be
        on its way, for at most `grace` seconds of waiting."""
        hard: dict[int, float] = {}
        soft: dict[int, float] = {}
        for tp in owned:
            records = pending.get(tp)
            p = tp.partition
            bound = records[-1].timestamp if records else self.newest.get(tp, -math.inf)
            if self._lagging(tp):
                if bound < hard.get(p, math.inf):
                    hard[p] = bound
            elif bound < soft.get(p, math.inf):
                soft[p] = bound
        now = self.clock()
        horizon = hard
        for p, bound in soft.items():
            if bound < hard.get(p, math.inf):
                since = self.waiting.setdefault(p, now)
                if now - since < self.grace:
                    horizon[p] = bound
                else:
                    del self.waiting[p]
        return horizon

    def _lagging(self, tp: TopicPartition) -> bool:
        """More of `tp` than was fetched waits on the broker (or may: not fetched yet)."""
        end = self.highwater(tp)
        if end is None:
            return True
        fetched = self.fetched_to.get(tp)
        if fetched is None:
            fetched = self.position(tp) or 0
        return fetched < end
