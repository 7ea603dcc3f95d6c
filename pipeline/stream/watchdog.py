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
