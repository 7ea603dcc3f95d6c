"""Call states in memory for the batch worker (`--state memory`), with the changes of a cycle
tracked for the changelog. (On local disk: `pipeline.state.checkpointed.DiskStates`.)"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pipeline.core.correlate import CallState
from pipeline.stream.runtime import States

__all__ = ["ChangelogStates"]


class ChangelogStates(States):
    """Call states in memory, remembering which calls changed (and on which partition) since
    the last `changes()`, so that a cycle writes each changed call to the changelog once."""

    def __init__(self) -> None:
        self.data: dict[str, CallState] = {}
        self.partition_of: dict[str, int] = {}
        self.changed: dict[str, int] = {}
        self.current = 0  # the partition whose messages are being processed

    def __getitem__(self, key: str) -> CallState:
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def __setitem__(self, key: str, state: CallState) -> None:
        self.data[key] = state
        self.partition_of[key] = self.changed[key] = self.current

    def __delitem__(self, key: str) -> None:
        del self.data[key]
        self.changed[key] = self.partition_of.pop(key, self.current)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self.data))

    def __len__(self) -> int:
        return len(self.data)

    def changes(self) -> list[tuple[str, int, CallState | None]]:
        """(call id, partition, new state or None when forgotten) since the last call."""
        out = [(key, p, self.data.get(key)) for key, p in self.changed.items()]
        self.changed = {}
        return out

    def restore(self, key: str, partition: int, state: CallState | None) -> None:
        """A state read back from the changelog (None: a tombstone); not a change."""
        if state is None:
            self.data.pop(key, None)
            self.partition_of.pop(key, None)
        else:
            self.data[key] = state
            self.partition_of[key] = partition

    def drop(self, partitions: set[int]) -> None:
        """Forget the states of partitions this worker no longer owns."""
        for key in [k for k, p in self.partition_of.items() if p in partitions]:
            del self.data[key]
            del self.partition_of[key]
