"""The checkpoints of a batch worker on local state stores (`DiskStates`), and the commit that
goes with them.

Once a cycle's outputs are acknowledged, its state changes go to each partition's store with
a checkpoint: the changelog offset after the cycle's records, the input offsets, the
partition's event-time clock. The cycle's commit then carries that changelog offset beside
each input offset, so that a restart knows where the records of cycles that never committed
begin (`pipeline.state.restore`). What goes into both is worked out here; when they are
written, and what a failure does, is the cycle's business (`pipeline.stream.batch`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime

from aiokafka import TopicPartition

from pipeline.kafka.topics import TOPIC_CHANGELOG, TP, WORKER_TOPICS
from pipeline.state.checkpointed import Checkpoint, DiskStates, clock_us

__all__ = ["cycle_checkpoints", "marked_commit"]


def cycle_checkpoints(
    states: DiskStates,
    processed: Iterable[int],
    ends: Mapping[TP, int],
    position: Mapping[TP, int],
    partitions: int,
    clock: Callable[[int], dict[str, datetime]],
) -> dict[int, Checkpoint]:
    """A checkpoint per partition `processed` this cycle: where its changelog records end
    (`ends`, as acknowledged; the previous checkpoint's when the cycle wrote none), its input
    `position`, its event-time `clock`."""
    found: dict[int, Checkpoint] = {}
    for p in processed:
        previous = states.stores[p].checkpoint
        changelog = ends.get((TOPIC_CHANGELOG, p), previous.changelog if previous else 0)
        inputs = {t: position[(t, p)] for t in WORKER_TOPICS if (t, p) in position}
        found[p] = Checkpoint(partitions, changelog, inputs, clock_us(clock(p)))
    return found


def marked_commit(
    checkpoints: Mapping[int, Checkpoint], position: Mapping[TP, int]
) -> dict[TopicPartition, tuple[int, str]]:
    """The offsets to commit, each with its partition's changelog offset as metadata.

    Every input topic of a checkpointed partition carries it, also those without messages
    this cycle (at their position): the mark of a topic idle for hours would make a restart
    read everything written since."""
    return {
        TopicPartition(t, p): (position[(t, p)], str(cp.changelog))
        for p, cp in checkpoints.items()
        for t in WORKER_TOPICS
        if (t, p) in position
    }
