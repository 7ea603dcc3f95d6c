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


def test_the_fence_follows_an_unbroken_run_from_the_committed_offset():
    from pipeline.stream.watchdog import CommitFence

    fence = CommitFence()
    fence.reset({A: 100}, [A, B])
    assert fence.limit(A) == 100 and fence.limit(B) is None
    for offset in range(100, 110):
        fence.processed(A, offset)
    assert fence.limit(A) == 110
    fence.processed(A, 105)  # a re-delivery changes nothing
    assert fence.limit(A) == 110
    fence.processed(B, 7)  # nothing committed yet: the first message sets the start
    fence.processed(B, 8)
    assert fence.limit(B) == 9


def test_the_fence_holds_at_a_hole():
    from pipeline.stream.watchdog import CommitFence

    fence = CommitFence()
    fence.reset({A: 100}, [A])
    fence.processed(A, 100)
    fence.processed(A, 103)  # 101 and 102 never reached the agent
    fence.processed(A, 104)
    assert fence.limit(A) == 101 and fence.holes == 2
    fence.processed(A, 101)  # the worker reads from the hole again
    fence.processed(A, 102)
    fence.processed(A, 103)
    assert fence.limit(A) == 104


def test_reset_forgets_partitions_no_longer_owned():
    from pipeline.stream.watchdog import CommitFence

    fence = CommitFence()
    fence.reset({A: 5, B: 9}, [A, B])
    fence.reset({A: 5, B: 9}, [B])
    assert fence.owned() == [B] and fence.limit(A) is None
