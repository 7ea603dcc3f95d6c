"""A worker that stops committing a partition it owns must not sit there: it restarts itself.

Faust commits a partition only up to the first gap in the offsets it has
acknowledged. After a broker restart a worker can be left with such a gap and
never commit that partition again while it keeps its assignment (the lag stays
forever; found by the reliability suite, known upstream as "COMMIT OFFSET NOT
ADVANCING"). Nothing is lost — offsets are behind, not ahead — but the calls on
that partition stop reaching the store. The cure Faust itself recommends is a
restart: the worker re-executes itself, recovers its table from the changelog,
re-reads from the committed offsets and re-sends outputs in doubt.

`CommitWatchdog` is the pure decision; the Faust app feeds it committed and
end offsets from a timer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

TP = tuple[str, int]


@dataclass(slots=True)
class CommitWatchdog:
    """Which owned partitions have had a backlog but no new commit for `stall_s` seconds."""

    stall_s: float = 60.0
    _since: dict[TP, tuple[int | None, float]] = field(default_factory=dict)

    def reset(self, now: float) -> None:
        """A rebalance or recovery: every partition starts a fresh grace period."""
        self._since = {tp: (offset, now) for tp, (offset, _) in self._since.items()}

    def check(self, committed: Mapping[TP, int], ends: Mapping[TP, int], now: float) -> list[TP]:
        """Partitions of `ends` (the owned ones) whose commit has not moved for `stall_s`
        although messages were waiting beyond it."""
        stalled = []
        since = {}
        for tp, end in ends.items():
            offset = committed.get(tp)
            last_offset, last_change = self._since.get(tp, (offset, now))
            if offset != last_offset or end <= (offset or 0):
                last_change = now  # progress, or nothing to do
            since[tp] = (offset, last_change)
            if now - last_change >= self.stall_s:
                stalled.append(tp)
        self._since = since
        return stalled


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
