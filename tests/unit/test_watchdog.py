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


def feed(fence, tp, offsets):
    verdicts = []
    for offset in offsets:
        verdict = fence.check(tp, offset)
        verdicts.append(verdict)
        if verdict == "next":
            fence.processed(tp, offset)
    return verdicts


def test_the_fence_follows_an_unbroken_run_from_the_committed_offset():
    from pipeline.stream.watchdog import CommitFence

    fence = CommitFence()
    fence.reset({A: 100}, [A, B])
    assert fence.limit(A) == 100 and fence.limit(B) is None
    assert set(feed(fence, A, range(100, 110))) == {"next"}
    assert fence.limit(A) == 110
    assert feed(fence, A, [105]) == ["seen"]  # a re-delivery changes nothing
    assert fence.limit(A) == 110
    assert feed(fence, B, [7, 8]) == ["next", "next"]  # nothing committed: first sets start
    assert fence.limit(B) == 9


def test_the_fence_reports_a_hole_and_holds():
    from pipeline.stream.watchdog import CommitFence

    fence = CommitFence()
    fence.reset({A: 100}, [A])
    assert feed(fence, A, [100, 103, 104]) == ["next", "hole", "hole"]
    assert fence.limit(A) == 101 and fence.holes == 2
    assert feed(fence, A, [101, 102, 103]) == ["next"] * 3  # read from the hole again
    assert fence.limit(A) == 104


def test_an_accepted_gap_moves_the_fence_on():
    from pipeline.stream.watchdog import CommitFence

    fence = CommitFence()
    fence.reset({A: 100}, [A])
    assert feed(fence, A, [100, 102]) == ["next", "hole"]
    fence.accept_gap(A, 102)  # offset 101 was a transaction marker
    assert feed(fence, A, [102, 103]) == ["next", "next"] and fence.limit(A) == 104


def test_reset_forgets_partitions_no_longer_owned():
    from pipeline.stream.watchdog import CommitFence

    fence = CommitFence()
    fence.reset({A: 5, B: 9}, [A, B])
    fence.reset({A: 5, B: 9}, [B])
    assert fence.owned() == [B] and fence.limit(A) is None
