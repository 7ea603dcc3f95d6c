"""The batch worker's pure parts: co-partitioning assignor, changed-state tracking."""

from __future__ import annotations

import pytest
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.coordinator.protocol import ConsumerProtocolMemberMetadata

from pipeline.core.correlate import CallState
from pipeline.kafka.topics import INPUT_TOPICS, TOPIC_TICKS
from pipeline.stream.assignment import ASSIGNOR
from pipeline.stream.memory_states import ChangelogStates

TOPICS = [*INPUT_TOPICS, TOPIC_TICKS]


class Cluster:
    def __init__(self, partitions: int) -> None:
        self.partitions = partitions

    def partitions_for_topic(self, topic: str) -> set[int]:
        return set(range(self.partitions))


def assignment(assignor, workers: int, partitions: int) -> dict[str, dict[str, list[int]]]:
    members = {
        f"worker-{i}": ConsumerProtocolMemberMetadata(0, TOPICS, b"") for i in range(workers)
    }
    result = assignor.assign(Cluster(partitions), members)
    return {m: dict(a.assignment) for m, a in result.items()}


@pytest.mark.parametrize("workers", [1, 2, 3, 5, 8, 9])
@pytest.mark.parametrize("partitions", [1, 8, 12])
def test_every_worker_gets_the_same_partition_numbers_of_every_topic(workers, partitions):
    seen: set[int] = set()
    for topics in assignment(ASSIGNOR, workers, partitions).values():
        numbers = [sorted(topics.get(t, [])) for t in TOPICS]
        assert all(n == numbers[0] for n in numbers), topics
        assert not seen & set(numbers[0])
        seen |= set(numbers[0])
    assert seen == set(range(partitions))


def test_round_robin_would_split_a_call_over_workers():
    """Why the assignor is chosen explicitly: aiokafka's default breaks co-partitioning."""
    split = assignment(RoundRobinPartitionAssignor, 3, 8)
    assert any(
        len({tuple(sorted(topics.get(t, []))) for t in TOPICS}) > 1 for topics in split.values()
    )


def test_changes_name_each_changed_call_once_with_its_partition():
    states = ChangelogStates()
    states.current = 3
    states["a"] = CallState("a")
    states["a"] = CallState("a", revision=1)
    states["b"] = CallState("b")
    states.current = 5
    states["c"] = CallState("c")
    del states["b"]  # forgotten: a tombstone on the partition it was written to
    assert sorted(states.changes()) == [
        ("a", 3, CallState("a", revision=1)),
        ("b", 3, None),
        ("c", 5, CallState("c")),
    ]
    assert states.changes() == []
    assert dict(states.data) == {"a": CallState("a", revision=1), "c": CallState("c")}


def test_restored_states_are_not_changes_and_drop_forgets_whole_partitions():
    states = ChangelogStates()
    states.restore("a", 1, CallState("a"))
    states.restore("b", 2, CallState("b"))
    states.restore("b", 2, None)  # a tombstone in the changelog
    states.restore("c", 2, CallState("c"))
    assert states.changes() == []
    assert set(states) == {"a", "c"}
    states.drop({2})
    assert set(states) == {"a"} and states.get("c") is None


def test_a_kept_partition_someone_else_committed_beyond_is_stale():
    from pipeline.stream.assignment import stale_partitions

    position = {("sip.call.start", 1): 50, ("sip.call.end", 1): 40, ("sip.call.start", 2): 7}
    committed = {
        ("sip.call.start", 1): 50,  # ours: equal
        ("sip.call.end", 1): 30,  # ours, our last commit failed: behind, not stale
        ("sip.call.start", 2): 9,  # another worker went on while we were out of the group
        ("cdrpipe.ticks", 3): 4,  # nothing of partition 3 processed here yet
    }
    assert stale_partitions({1, 2, 3}, committed, position) == {2, 3}
    assert stale_partitions({1}, committed, position) == set()


def test_a_long_recovery_step_keeps_the_loop_watchdog_quiet(monkeypatch):
    """A rebuild of millions of states takes minutes inside the rebalance listener: the worker
    must not take it for a stuck processing loop (and restart itself, to rebuild again)."""
    import asyncio
    import time

    from pipeline.stream import assignment, batch

    monkeypatch.setattr(assignment, "ALIVE_EVERY_S", 0.05)
    worker = batch.BatchWorker(bootstrap="127.0.0.1:1", partitions=1)
    worker.alive_at = 0.0
    seen: list[float] = []

    async def slow_step() -> str:
        for _ in range(6):
            await asyncio.sleep(0.05)
            seen.append(time.monotonic() - worker.alive_at)
        return "done"

    assert asyncio.run(worker.recovery.alive_while(slow_step())) == "done"
    assert max(seen[1:]) < 0.5  # refreshed while the step ran, not only at its end
