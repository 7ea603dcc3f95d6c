"""The commit watchdog: a partition with waiting messages and no progress for too long.

Without a `processed` source (the batch worker) a standing commit is the stall; with one (the
Faust agent's commit fence) a standing commit is a stall only if the agent processed past it,
or if the partition gets no service while the worker has no backlog elsewhere to work off.
"""

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


# -- with what the agent processed (the Faust engine) -------------------------------------

INPUTS = [(topic, p) for topic in ("sip.call.start", "sip.call.connect", "sip.call.end")
          for p in range(8)]  # fmt: skip
TICKS = [("cdrpipe.ticks", p) for p in range(8)]


class Agent:
    """What the agent processed (its commit fence) and what the group committed."""

    def __init__(self, committed: dict) -> None:
        self.done = dict(committed)
        self.committed = dict(committed)

    def process(self, tp, n: int) -> None:
        self.done[tp] = self.done.get(tp, 0) + n

    def commit(self) -> None:
        self.committed.update(self.done)


def test_a_long_catch_up_that_starves_the_ticks_is_no_stall():
    """A 20-minute backlog drain as Faust does it: the input partitions in turn (every 10 s
    check sees some advanced, some not, by uneven amounts), commits after them, and not one
    tick processed until the backlog is gone, while a tick a second arrives on each."""
    agent = Agent({tp: 1000 for tp in INPUTS} | {tp: 50 for tp in TICKS})
    dog = CommitWatchdog(stall_s=60, processed=agent.done.get)
    ends = {tp: 1000 + 12_000 + 97 * i for i, tp in enumerate(INPUTS)}
    for t in range(0, 1200, 10):
        ends.update({tp: 50 + t for tp in TICKS})
        for i, tp in enumerate(INPUTS):
            if (t // 10 + i) % 3:  # this partition's turn (two thirds of them per check)
                agent.process(tp, min(40 + i, ends[tp] - agent.done[tp]))
        if t % 20 == 0:
            agent.commit()
        assert dog.check(agent.committed, ends, now=t) == [], t
    assert all(agent.done[tp] < ends[tp] for tp in INPUTS)  # still catching up at the end
    # The backlog is gone; the ticks are served a few seconds later. Nothing was stalled.
    for t in range(1200, 1260, 10):
        for tp in INPUTS:
            agent.process(tp, ends[tp] - agent.done[tp])
        ends.update({tp: 50 + t for tp in TICKS})
        if t >= 1220:
            agent.done.update({tp: ends[tp] for tp in TICKS})
        agent.commit()
        assert dog.check(agent.committed, ends, now=t) == [], t


def test_a_commit_that_does_not_follow_the_processing_is_a_stall_even_when_busy():
    """The Faust bug: the agent goes on processing a partition, its commit never moves
    (while a backlog keeps the worker busy and the other commits advance)."""
    stuck = ("sip.call.start", 3)
    agent = Agent({tp: 0 for tp in INPUTS})
    dog = CommitWatchdog(stall_s=60, processed=agent.done.get)
    ends = {tp: 100_000 for tp in INPUTS}
    stalled = []
    for t in range(0, 200, 10):
        for tp in INPUTS:
            agent.process(tp, 300)
        committed_before = agent.committed[stuck]
        agent.commit()
        agent.committed[stuck] = committed_before if t >= 30 else agent.committed[stuck]
        stalled = dog.check(agent.committed, ends, now=t)
        if stalled:
            break
    assert stalled == [stuck] and t == 90  # first seen ahead of a standing commit at 30


def test_a_partition_not_served_while_the_worker_keeps_up_is_a_stall():
    """Steady traffic the worker keeps up with; one partition is no longer delivered."""
    stuck = ("sip.call.end", 5)
    agent = Agent({tp: 0 for tp in INPUTS + TICKS})
    dog = CommitWatchdog(stall_s=60, processed=agent.done.get)
    ends = dict(agent.done)
    stalled = []
    for t in range(0, 300, 10):
        for tp in INPUTS + TICKS:
            ends[tp] += 10 if tp in TICKS else 200  # arrives between two checks
            if tp != stuck or t < 50:
                agent.process(tp, ends[tp] - agent.done[tp] - 3)  # the last few in flight
        agent.commit()
        stalled = dog.check(agent.committed, ends, now=t)
        if stalled:
            break
    assert stalled == [stuck] and t == 100  # last served by the check at 40


def test_a_partition_starved_by_a_backlog_stalls_once_the_backlog_is_gone():
    """Busy elsewhere excuses a partition that gets no service only while it lasts: once the
    worker has had `stall_s` without a backlog and still does not serve it, it is stalled."""
    stuck = ("cdrpipe.ticks", 2)
    agent = Agent({tp: 0 for tp in INPUTS + TICKS})
    dog = CommitWatchdog(stall_s=60, processed=agent.done.get)
    ends = {tp: 50_000 for tp in INPUTS} | {tp: 0 for tp in TICKS}
    for t in range(0, 400, 10):
        ends.update({tp: t for tp in TICKS})
        if t < 200:  # the backlog
            for tp in INPUTS:
                agent.process(tp, 200)
        else:  # caught up; all ticks served but one partition's
            agent.done.update({tp: ends[tp] for tp in INPUTS})
            agent.done.update({tp: ends[tp] for tp in TICKS if tp != stuck})
        agent.commit()
        stalled = dog.check(agent.committed, ends, now=t)
        if t < 250:
            assert stalled == [], t
        elif stalled:
            break
    assert stalled == [stuck] and t == 250  # last busy check at 190


def test_a_worker_processing_nothing_with_messages_waiting_stalls():
    agent = Agent({A: 10, B: 10})
    dog = CommitWatchdog(stall_s=60, processed=agent.done.get)
    assert dog.check(agent.committed, {A: 500, B: 10}, now=0) == []
    assert dog.check(agent.committed, {A: 500, B: 10}, now=50) == []
    assert dog.check(agent.committed, {A: 500, B: 10}, now=60) == [A]


def test_processed_but_not_yet_committed_is_no_stall():
    """A partition served once after a long starvation: its commit follows a second later."""
    agent = Agent({A: 10, B: 0})
    dog = CommitWatchdog(stall_s=60, processed=agent.done.get)
    for t in range(0, 300, 10):  # B starved behind A's backlog for five minutes
        agent.process(A, 100)
        agent.commit()
        assert dog.check(agent.committed, {A: 1_000_000, B: t}, now=t) == []
    agent.process(B, 290)  # served just before the check, the commit not yet made
    assert dog.check(agent.committed, {A: 1_000_000, B: 300}, now=300) == []
    agent.commit()
    assert dog.check(agent.committed, {A: 1_000_000, B: 310}, now=310) == []


def test_reset_gives_a_fresh_grace_period_with_processed_offsets():
    agent = Agent({A: 1})
    dog = CommitWatchdog(stall_s=60, processed=agent.done.get)
    agent.process(A, 5)  # processed, commit stuck
    dog.check(agent.committed, {A: 9}, now=0)
    dog.reset(now=55)
    assert dog.check(agent.committed, {A: 9}, now=100) == []
    assert dog.check(agent.committed, {A: 9}, now=115) == [A]


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
