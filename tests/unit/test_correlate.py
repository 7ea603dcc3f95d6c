"""Correlation of start/connect/end on event time: orders, duplicates, deadlines."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.correlate import (
    CallState,
    Correlator,
    DeadLetter,
    Deadlines,
    Duplicate,
    Emit,
    HeldEvent,
)
from pipeline.core.model import Event, Source
from pipeline.core.partitioning import murmur2, partition_for

T0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
SETTINGS = Deadlines(
    max_call_duration=timedelta(hours=4),
    orphan_wait=timedelta(hours=1),
    memory=timedelta(hours=24),
)


def held(kind: str, call_id: str = "c1", at: float = 0.0, **fields) -> HeldEvent:
    ts = T0 + timedelta(seconds=at)
    if kind == "start":
        fields = {
            "gateway": "fra1",
            "direction": "outbound",
            "account": "a",
            "source": "1201",
            "destination": "4420",
            "trunk": "T",
            **fields,
        }
    if kind == "end":
        fields = {
            "disconnect_code": 200,
            "disconnect_reason": "Bye",
            "disconnect_initiator": "origination",
            **fields,
        }
    event = Event(kind=kind, id=call_id, ts=ts, **fields)
    raw = orjson.dumps({"event": kind, "id": call_id, "ts": ts.isoformat(), **fields})
    return HeldEvent(event, raw, Source("t", 0, 0))


def run(events: list[HeldEvent], correlator: Correlator | None = None) -> tuple[Correlator, list]:
    correlator = correlator or Correlator({}, SETTINGS)
    actions = []
    for h in events:
        actions.extend(correlator.process(h, 0))
    return correlator, actions


def final(actions: list) -> CallState:
    emits = [a.state for a in actions if isinstance(a, Emit)]
    assert emits, "no CDR emitted"
    return emits[-1]


def move_to(correlator: Correlator, at: float) -> list:
    """Event time reaches `at` on every topic: another whole call happens then."""
    other = f"other-{at}"
    return run(
        [held("start", other, at), held("connect", other, at), held("end", other, at)], correlator
    )[1]


def key(state: CallState) -> tuple:
    return (state.start, state.connect, state.end, state.timed_out_at)


CALL = [held("start", at=0), held("connect", at=5), held("end", at=65)]


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_all_six_orders_give_the_same_call(order):
    _, actions = run([CALL[i] for i in order])
    state = final(actions)
    assert key(state) == (CALL[0], CALL[1], CALL[2], None)
    assert state.revision == sum(isinstance(a, Emit) for a in actions)
    assert not any(isinstance(a, (DeadLetter, Duplicate)) for a in actions)


def test_connect_after_end_corrects_the_emitted_cdr():
    _, actions = run([CALL[0], CALL[2], CALL[1]])
    emits = [a.state for a in actions if isinstance(a, Emit)]
    assert [e.connect for e in emits] == [None, CALL[1]]
    assert [e.revision for e in emits] == [1, 2]


def test_duplicates_are_counted_not_emitted():
    _, actions = run(CALL + CALL + [CALL[2]])
    assert sum(isinstance(a, Emit) for a in actions) == 1
    assert sum(isinstance(a, Duplicate) for a in actions) == 4


def test_conflicting_events_of_one_kind_resolve_to_the_earliest_in_any_order():
    early, late = held("end", at=60), held("end", at=70, disconnect_reason="Later")
    for ends in ([early, late], [late, early]):
        _, actions = run([CALL[0], CALL[1], *ends])
        assert final(actions).end == early
        assert sum(isinstance(a, Duplicate) for a in actions) == 1


def test_start_without_end_times_out_at_max_duration_then_real_end_corrects():
    correlator, actions = run([held("start", at=0), held("connect", at=3)])
    assert not actions
    # other calls on the partition move event time past the 4 h deadline
    actions = move_to(correlator, 4 * 3600)
    closed = next(a.state for a in actions if isinstance(a, Emit) and a.state.id == "c1")
    assert closed.id == "c1" and closed.timed_out_at == T0 + timedelta(hours=4)
    assert closed.end is None and closed.revision == 1
    _, actions = run([held("end", at=5 * 3600)], correlator)
    corrected = final(actions)
    assert corrected.timed_out_at is None and corrected.end.event.ts == T0 + timedelta(hours=5)
    assert corrected.revision == 2


def test_end_without_start_is_dead_lettered_as_orphan_after_the_wait():
    correlator, actions = run([held("connect", "o1", at=0), held("end", "o1", at=10)])
    assert not actions
    assert not any(isinstance(a, DeadLetter) for a in move_to(correlator, 3599))
    dead = [a for a in move_to(correlator, 3600) if isinstance(a, DeadLetter)]
    assert [d.kind for d in dead] == ["orphan", "orphan"]
    assert "o1" in dead[0].reason and "orphan" in dead[0].reason
    assert correlator.states["o1"].orphaned_at is not None  # a tombstone, no call
    assert correlator.open_calls() == 0


def test_late_start_within_orphan_wait_completes_the_call():
    _, actions = run([held("end", at=65), held("connect", at=5), held("start", at=0)])
    assert key(final(actions)) == (CALL[0], CALL[1], CALL[2], None)


def test_completed_calls_are_forgotten_after_memory_and_later_events_are_late():
    correlator, _ = run(CALL)
    move_to(correlator, 65 + 24 * 3600)
    assert "c1" not in correlator.states
    _, actions = run([held("end", at=65)], correlator)
    assert [a.kind for a in actions if isinstance(a, DeadLetter)] == ["late"]


def test_events_within_memory_are_duplicates_not_new_calls():
    correlator, _ = run(CALL)
    move_to(correlator, 23 * 3600)
    _, actions = run([CALL[2]], correlator)
    assert actions == [Duplicate("c1")]


def test_a_topic_running_ahead_does_not_orphan_calls_whose_start_is_behind():
    """Kafka delivers topics independently: ends may arrive hours ahead of their starts."""
    correlator = Correlator({}, SETTINGS)
    actions = []
    for n in range(5):  # the end topic runs 5 h ahead of the start topic
        actions += correlator.process(held("end", f"e{n}", at=n * 3600), 0)
    assert correlator.watermark(0) is None  # not every topic seen yet: no event time
    actions += correlator.process(held("start", "x", at=0), 0)
    actions += correlator.process(held("connect", "x", at=0), 0)
    assert correlator.watermark(0) == T0  # the start topic has not moved: event time neither
    assert not any(isinstance(a, DeadLetter) for a in actions)
    for n in range(5):
        actions += correlator.process(held("start", f"e{n}", at=n * 3600 - 60), 0)
    assert sum(isinstance(a, Emit) for a in actions) == 5
    assert not any(isinstance(a, DeadLetter) for a in actions)


def test_deadlines_wait_for_every_source_partition_forwarding_to_a_partition():
    """Messages forwarded from other input partitions (`upstream`): the partition's own
    clock may run ahead of what is still on its way, its deadlines may not."""
    correlator, _ = run([held("end", "o1", at=0)])
    correlator.expect_upstream(0, sources=2)  # a forwarded message came
    assert not any(isinstance(a, DeadLetter) for a in move_to(correlator, 3 * 3600))
    correlator.upstream(0, 0, T0 + timedelta(hours=3), sources=2)
    assert correlator.watermark(0) is None  # source 1 has not told yet: nothing is decided
    # source 1 has forwarded up to 00:30 only: the start of o1 may still come
    assert correlator.upstream(0, 1, T0 + timedelta(minutes=30), sources=2) == []
    assert correlator.watermark(0) == T0 + timedelta(minutes=30)
    run([held("start", "o1", at=600)], correlator)  # it did (forwarded)
    assert correlator.states["o1"].start is not None
    assert correlator.states["o1"].orphaned_at is None
    correlator2, _ = run([held("end", "o2", at=0)])
    correlator2.upstream(0, 0, T0 + timedelta(hours=3), sources=2)
    correlator2.upstream(0, 1, T0 + timedelta(minutes=30), sources=2)
    move_to(correlator2, 3 * 3600)
    # source 1 reaches 01:00: o2's orphan wait is over on every source
    actions = correlator2.upstream(0, 1, T0 + timedelta(hours=1), sources=2)
    dead = [(a.kind, a.call_id) for a in actions if isinstance(a, DeadLetter)]
    assert dead == [("orphan", "o2")]


def test_a_source_with_nothing_on_its_way_holds_nobody_back_and_its_time_never_goes_back():
    correlator, _ = run([held("end", "o1", at=0)])
    correlator.upstream(0, 0, T0 + timedelta(hours=3), sources=2)
    correlator.upstream(0, 1, T0 + timedelta(minutes=10), sources=2)
    assert not any(isinstance(a, DeadLetter) for a in move_to(correlator, 2 * 3600))
    dead = [a for a in correlator.upstream(0, 1, None, sources=2) if isinstance(a, DeadLetter)]
    assert [d.call_id for d in dead] == ["o1"]
    correlator.upstream(0, 1, T0 + timedelta(hours=2), sources=2)  # forwarding again
    assert correlator.watermark(0) == T0 + timedelta(hours=2)
    correlator.upstream(0, 1, T0 + timedelta(hours=1), sources=2)  # a new owner re-reads
    assert correlator.watermark(0) == T0 + timedelta(hours=2)


def test_advance_moves_event_time_without_events():
    correlator, _ = run([held("start", at=0)])
    assert correlator.open_calls() == 1
    actions = correlator.advance(0, T0 + timedelta(hours=4))
    assert final(actions).timed_out_at == T0 + timedelta(hours=4)
    assert correlator.open_calls() == 0


def test_partitions_keep_their_own_event_time():
    correlator = Correlator({}, SETTINGS)
    correlator.process(held("start", "p0", at=0), 0)
    actions = correlator.advance(1, T0 + timedelta(hours=5))
    assert not actions  # partition 1's clock does not close partition 0's call
    actions = correlator.advance(0, T0 + timedelta(hours=4))
    assert final(actions).id == "p0"


def test_a_connect_keeps_the_deadline_entry_of_its_start():
    """A connect does not move an open call's deadline (start + max call duration), so it
    queues no second entry for it; the call still times out, with its connect."""
    correlator, _ = run([held("start", at=0), held("connect", at=5), held("connect", at=3)])
    deadlines = correlator._partitions[0].deadlines
    assert deadlines == [(T0 + SETTINGS.max_call_duration, "c1")]
    closed = final(correlator.advance(0, T0 + SETTINGS.max_call_duration))
    assert closed.timed_out_at == T0 + SETTINGS.max_call_duration
    assert closed.connect is not None and closed.connect.event.ts == T0 + timedelta(seconds=3)
    # a start (first, or an earlier one) moves the deadline: queued anew each time
    correlator, _ = run([held("connect", at=5), held("start", at=4), held("start", at=2)])
    assert sorted(due for due, _ in correlator._partitions[0].deadlines) == [
        T0 + timedelta(seconds=5) + SETTINGS.orphan_wait,
        T0 + timedelta(seconds=2) + SETTINGS.max_call_duration,
        T0 + timedelta(seconds=4) + SETTINGS.max_call_duration,
    ]


def test_rebuild_restores_deadlines_from_states():
    correlator, _ = run([held("start", at=0)])
    recovered = Correlator(dict(correlator.states), SETTINGS)
    recovered.rebuild(0)
    assert recovered.watermark(0) is None  # only the start topic was seen
    assert final(recovered.advance(0, T0 + timedelta(hours=4))).id == "c1"


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 2), min_size=3, max_size=9).filter(lambda xs: set(xs) == {0, 1, 2}),
    st.randoms(use_true_random=False),
)
def test_any_permutation_with_duplicates_gives_the_same_final_call(picks, rnd: random.Random):
    events = [CALL[i] for i in picks]
    rnd.shuffle(events)
    _, actions = run(events)
    assert key(final(actions)) == (CALL[0], CALL[1], CALL[2], None)
    assert sum(isinstance(a, Duplicate) for a in actions) == len(picks) - 3


def test_partition_matches_kafka_default_partitioner():
    from aiokafka.partitioner import murmur2 as kafka_murmur2

    rnd = random.Random(7)
    for n in range(2000):
        key = f"gw-{rnd.randrange(10**9)}-{'x' * (n % 7)}"
        assert murmur2(key.encode()) == kafka_murmur2(key.encode()) & 0xFFFFFFFF
        assert 0 <= partition_for(key, 8) < 8


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64))
def test_murmur2_matches_kafka_on_any_bytes(data):
    from aiokafka.partitioner import murmur2 as kafka_murmur2

    assert murmur2(data) == kafka_murmur2(data) & 0xFFFFFFFF
