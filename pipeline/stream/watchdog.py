"""A worker that stops committing a partition it owns must not sit there: it restarts itself.

Faust commits a partition only up to the first gap in the offsets it has
acknowledged. After a broker restart a worker can be left with such a gap and
never commit that partition again while it keeps its assignment (the lag stays
forever; found by the reliability suite, known upstream as "COMMIT OFFSET NOT
ADVANCING"). Nothing is lost — offsets are behind, not ahead — but the calls on
that partition stop reaching the store. The cure Faust itself recommends is a
restart: the worker re-executes itself, recovers its table from the changelog,
re-reads from the committed offsets and re-sends outputs in doubt.

`CommitWatchdog` is the pure decision; the workers feed it committed and end
offsets from a timer.

A commit that stands still is not enough to call a partition stalled. A worker
working through a backlog longer than the stall time serves its partitions
unevenly: Faust delivers next to no `cdrpipe.ticks` messages while input
topics have a backlog (their partitions go round robin, the ticks wait for the
end of the backlog), so the ticks partitions have waiting messages and no new
commit for most of the catch-up. Judging by commits alone restarted a healthy
worker every `stall_s` of any catch-up, and each restart began the catch-up
anew. So, when the watchdog knows what the worker processed (`processed`, the
Faust agent's commit fence), it tells the two ways of not committing apart:

- **The commit does not follow the processing**: the worker processed messages
  of the partition beyond its committed offset, and that commit has not moved
  for `stall_s`. Commits run every second for every partition with processed
  messages, however busy the worker is, so this is the commit path broken for
  that partition (the Faust bug above), never a busy worker: a stall.
- **The partition is not served**: messages wait beyond what the worker
  processed, and it processed none of them for `stall_s`. That is a stall only
  if the worker was not busy elsewhere during that time. Busy means working
  through a backlog: at some check the worker progressed on a partition and
  still had not reached the end offset that partition had at the check before
  (it has more waiting than it processes between two checks). A worker that
  keeps up with its traffic is never busy in this sense, so a partition it
  stops serving is caught after `stall_s`; a partition starved by a catch-up
  gets served within seconds once the backlog is gone, and the grace of
  `stall_s` after the last busy check covers that. A partition that is never
  served while the worker stays overloaded cannot be told from one starved by
  scheduling until the overload ends; the worker's lag shows it meanwhile.

Without `processed` (the batch worker, whose fetches hand out every partition's
fetched records in turn, ticks included), the committed offset stands for the
progress and any partition with messages waiting beyond a commit that has not
moved for `stall_s` is stalled.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from pipeline.kafka.topics import TP


@dataclass(slots=True)
class _Seen:
    """One partition as the previous check left it."""

    committed: int | None
    processed: int | None
    end: int
    commit_moved: float  # the commit last moved, or nothing waited beyond it
    served: float  # the processed offset last moved, or nothing waited beyond it
    ahead_since: float | None  # processed beyond a commit that has not moved since then


@dataclass(slots=True)
class CommitWatchdog:
    """Which owned partitions have stopped making progress for `stall_s` seconds although
    messages wait beyond their commit (see the module docstring for the rule)."""

    stall_s: float = 60.0
    # The offset after the last message the worker processed, per partition (None:
    # nothing yet); None: the worker cannot say, its commits stand for its progress.
    processed: Callable[[TP], int | None] | None = None
    _seen: dict[TP, _Seen] = field(default_factory=dict)
    _busy_at: float = float("-inf")  # last check that found the worker working off a backlog

    def reset(self, now: float) -> None:
        """A rebalance or recovery: every partition starts a fresh grace period."""
        for seen in self._seen.values():
            seen.commit_moved = seen.served = now
            if seen.ahead_since is not None:
                seen.ahead_since = now

    def check(self, committed: Mapping[TP, int], ends: Mapping[TP, int], now: float) -> list[TP]:
        """Partitions of `ends` (the owned ones, with their end offsets) that are stalled."""
        seen: dict[TP, _Seen] = {}
        for tp, end in ends.items():
            offset = committed.get(tp)
            done = offset if self.processed is None else self.processed(tp)
            prev = self._seen.get(tp)
            if prev is None:  # new (or again) ours: a fresh grace period
                prev = _Seen(offset, done, end, now, now, None)
            elif _advanced(done, prev.processed) and (done or 0) < prev.end:
                self._busy_at = now  # progress, and still short of what waited last time
            commit_moved = prev.commit_moved
            if offset != prev.committed or end <= (offset or 0):
                commit_moved = now
            served = prev.served
            if done != prev.processed or end <= (done or 0):
                served = now
            ahead_since = None
            if done is not None and (offset is None or done > offset):
                same_commit = offset == prev.committed and prev.ahead_since is not None
                ahead_since = prev.ahead_since if same_commit else now
            seen[tp] = _Seen(offset, done, end, commit_moved, served, ahead_since)
        self._seen = seen
        return [tp for tp, s in seen.items() if self._stalled(s, now)]

    def _stalled(self, seen: _Seen, now: float) -> bool:
        if self.processed is None:
            return now - seen.commit_moved >= self.stall_s
        if seen.ahead_since is not None and now - seen.ahead_since >= self.stall_s:
            return True  # processed, and the commit does not follow
        # not served, while the worker had nothing else to catch up with
        return now - seen.served >= self.stall_s and now - self._busy_at >= self.stall_s


def _advanced(offset: int | None, before: int | None) -> bool:
    return offset is not None and (before is None or offset > before)


@dataclass(slots=True)
class CommitFence:
    """Per partition, the offset after the last message the agent really processed, counting
    only an unbroken run from where the partition was (re)assigned.

    Commits never go past it. Faust decides what to commit from its own bookkeeping of
    acknowledged offsets, and the reliability suite caught it committing past messages that
    never reached the agent (lost calls after a worker restart). Input and tick topics are
    normally neither compacted nor transactional, so their offsets are consecutive: a message
    that skips ahead is a hole. The worker then asks the broker whether a message exists in
    the hole; if so it must not go on (its decisions would be made on incomplete input): it
    restarts and reads from the hole again. If not, the gap is accepted.
    """

    _next: dict[TP, int | None] = field(default_factory=dict)
    holes: int = 0

    def reset(self, committed: Mapping[TP, int], owned: list[TP]) -> None:
        """After a rebalance: the owned partitions start at their committed offsets (None:
        nothing committed yet; the first message seen sets the start)."""
        self._next = {tp: committed.get(tp) for tp in owned}

    def check(self, tp: TP, offset: int) -> str:
        """ "next" (process it), "seen" (a re-delivery of what was processed: skip it) or
        "hole" (messages before it never arrived: do not process it)."""
        expected = self._next.get(tp)
        if expected is None or offset == expected:
            return "next"
        if offset < expected:
            return "seen"
        self.holes += 1
        return "hole"

    def processed(self, tp: TP, offset: int) -> None:
        """The message at `offset` (the "next" one) is done: outputs handed to the producer."""
        self._next[tp] = offset + 1

    def accept_gap(self, tp: TP, offset: int) -> None:
        """The broker holds no message before `offset` (control records, compaction)."""
        self._next[tp] = offset

    def limit(self, tp: TP) -> int | None:
        """The highest offset that may be committed for `tp` (None: nothing yet)."""
        return self._next.get(tp)

    def owned(self) -> list[TP]:
        return list(self._next)
