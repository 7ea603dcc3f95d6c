"""The commit watchdog: a partition with waiting messages and no new commit for too long."""

from __future__ import annotations

from pipeline.stream.watchdog import CommitWatchdog

A, B = ("sip.call.start", 3), ("sip.call.end", 3)


def test_a_partition_that_keeps_committing_is_never_stalled():
    dog = CommitWatchdog(stall_s=60)
    for t in range(0, 600, 10):
        assert dog.check({A: t}, {A: t + 500}, now=t) == []


def test_waiting_messages_without_a_commit_for_the_stall_time_is_a_stall():
    dog = CommitWatchdog(stall_s=60)
    assert dog.check({A: 6168, B: 10}, {A: 6692, B: 10}, now=0) == []
    assert dog.check({A: 6168, B: 10}, {A: 6692, B: 10}, now=50) == []
    assert dog.check({A: 6168, B: 10}, {A: 6692, B: 10}, now=60) == [A]


def test_nothing_to_do_is_not_a_stall():
    dog = CommitWatchdog(stall_s=60)
    for t in range(0, 300, 10):
        assert dog.check({A: 100}, {A: 100}, now=t) == []
    # a partition never committed with nothing in it is idle too
    assert dog.check({}, {B: 0}, now=400) == []


def test_a_partition_never_committed_with_messages_waiting_stalls():
    dog = CommitWatchdog(stall_s=60)
    dog.check({}, {B: 5}, now=0)
    assert dog.check({}, {B: 5}, now=61) == [B]


def test_reset_gives_a_fresh_grace_period():
    dog = CommitWatchdog(stall_s=60)
    dog.check({A: 1}, {A: 9}, now=0)
    dog.reset(now=55)  # e.g. a rebalance with table recovery
    assert dog.check({A: 1}, {A: 9}, now=100) == []
    assert dog.check({A: 1}, {A: 9}, now=115) == [A]


def test_partitions_no_longer_owned_are_forgotten():
    dog = CommitWatchdog(stall_s=60)
    dog.check({A: 1}, {A: 9}, now=0)
    dog.check({B: 1}, {B: 1}, now=30)  # A went to another worker
    assert dog.check({A: 1}, {A: 9}, now=70) == []  # back: a new grace period
