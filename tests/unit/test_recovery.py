"""What a worker needs to resend after a crash: output triggers, orphan tombstones, recovery.

A crash can make a table write durable while the CDR or dead letters it goes
with never reached Kafka. These tests play that crash without Kafka: a
runtime processes messages, everything it output after the "committed" offset
is thrown away, and a new runtime over the same (recovered) table must send
exactly what is in doubt again.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import orjson

from pipeline.core.correlate import CallState, Correlator, DeadLetter, Deadlines, Emit, HeldEvent
from pipeline.core.events import parse_event
from pipeline.core.model import Source
from pipeline.core.partitioning import partition_for as route
from pipeline.core.refdata import RefDataHolder
from pipeline.state.changelog import state_from_json, state_to_json
from pipeline.stream.faust_engine import TableStates
from pipeline.stream.runtime import WorkerRuntime

from .test_correlate import SETTINGS, T0, held, move_to, run
from .test_engine import outbound_call

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "config"
TOPICS = {"start": "sip.call.start", "connect": "sip.call.connect", "end": "sip.call.end"}


def test_an_emitted_state_remembers_the_message_that_completed_it():
    end = held("end", at=60)
    end = type(end)(end.event, end.raw, Source("sip.call.end", 3, 41))
    _, actions = run([held("start"), end])
    (emit,) = [a for a in actions if isinstance(a, Emit)]
    assert emit.state.trigger == Source("sip.call.end", 3, 41)


def test_a_timeout_remembers_the_message_that_moved_event_time():
    correlator, _ = run([held("start", "t1")])
    actions = move_to(correlator, 4 * 3600)
    closed = next(a.state for a in actions if isinstance(a, Emit) and a.state.id == "t1")
    assert closed.trigger is not None and closed.trigger == held("start").source


def test_an_orphan_stays_as_a_tombstone_that_can_repeat_its_dead_letters():
    correlator, _ = run([held("connect", "o1", at=0), held("end", "o1", at=10)])
    dead = [a for a in move_to(correlator, 3600) if isinstance(a, DeadLetter)]
    tomb = correlator.states["o1"]
    assert tomb.orphaned_at == T0 + timedelta(hours=1) and tomb.settled and not tomb.complete
    assert correlator.open_calls() == 0
    assert correlator.outputs(tomb) == dead
    # forgotten like a finished call once the memory window has passed
    move_to(correlator, 3600 + 24 * 3600)
    assert "o1" not in correlator.states


def test_an_event_after_the_orphan_verdict_begins_a_new_call_not_a_duplicate():
    correlator, _ = run([held("end", "o2", at=0)])
    move_to(correlator, 3600)
    correlator.process(held("start", "o2", at=3700), 0)
    state = correlator.states["o2"]
    assert state.orphaned_at is None and state.end is None and state.start is not None


def test_the_same_event_again_after_the_orphan_verdict_is_a_duplicate():
    correlator, _ = run([held("connect", "o4", at=0), held("end", "o4", at=10)])
    move_to(correlator, 3600)
    again = correlator.process(held("end", "o4", at=10), 0)
    assert [type(a).__name__ for a in again if getattr(a, "call_id", None) == "o4"] == ["Duplicate"]
    assert correlator.states["o4"].orphaned_at is not None  # still the tombstone


def test_more_of_an_orphan_after_the_verdict_is_dead_lettered_at_once_and_only_once():
    correlator, _ = run([held("connect", "o5", at=0)])
    move_to(correlator, 3600)
    late_end = held("end", "o5", at=20)
    dead = [a for a in correlator.process(late_end, 0) if isinstance(a, DeadLetter)]
    assert [(d.kind, d.raw) for d in dead] == [("orphan", late_end.raw)]
    tomb = correlator.states["o5"]
    assert tomb.orphaned_at is not None and tomb.end == late_end and tomb.trigger is not None
    assert len(correlator.outputs(tomb)) == 2  # a recovery re-sends both
    again = correlator.process(late_end, 0)
    assert not [a for a in again if isinstance(a, DeadLetter) and a.call_id == "o5"]


def valid(raw: bytes, offset: int = 0) -> HeldEvent:
    event = parse_event(raw)
    return HeldEvent(event, raw, Source(TOPICS[event.kind], 0, offset))


def test_states_with_tombstones_and_triggers_survive_the_changelog_codec():
    orphan = outbound_call("o3")[1:]
    correlator, _ = run([valid(r) for r in orphan + outbound_call("c9")])
    move_to(correlator, 4 * 3600)
    assert correlator.states["o3"].orphaned_at and correlator.states["c9"].trigger
    for state in (correlator.states["o3"], correlator.states["c9"]):
        assert state_from_json(state_to_json(state)) == state
    # a state written by the previous version (six fields) still decodes
    old = orjson.loads(state_to_json(correlator.states["c9"]))[:6]
    decoded = state_from_json(orjson.dumps(old))
    assert decoded.trigger is None and decoded.orphaned_at is None and decoded.complete


def crash_and_recover(committed_share: float):
    """Feed a partition's traffic, lose every output after the commit point, recover."""
    refdata = RefDataHolder(CONFIG)
    settings = Deadlines(orphan_wait=timedelta(seconds=600), memory=timedelta(days=1))
    table: dict[bytes, bytes] = {}
    first = WorkerRuntime(refdata, TableStates(table), settings, 8, idle_after=1e9)
    first.on_assigned({0, 1, 2, 3, 4, 5, 6, 7})
    messages: list[tuple[str, int, bytes]] = []
    for i in range(60):
        call = f"call-{i}"
        raws = outbound_call(call, end_at=30 + i)
        if i % 10 == 0:
            raws = raws[1:]  # no start: an orphan once the wait has passed
        messages += [(orjson.loads(r)["event"], route(call, 8), r) for r in raws]
    # event time moves on for everyone: one late call per partition, well past the wait
    for p in range(8):
        call = next(f"tail-{j}" for j in range(10_000) if route(f"tail-{j}", 8) == p)
        for r in outbound_call(call, end_at=1):
            r = r.replace(b"2026-11-25T10:00", b"2026-11-25T11:00")
            messages.append((orjson.loads(r)["event"], p, r))
    offsets: dict[tuple[str, int], int] = {}
    outputs = []  # (topic, partition, offset, outcome)
    for kind, p, raw in messages:
        tp = (TOPICS[kind], p)
        offset = offsets[tp] = offsets.get(tp, -1) + 1
        outputs.append((tp, offset, first.on_message(raw, tp[0], p, offset)))
    committed = {tp: int((last + 1) * committed_share) for tp, last in offsets.items()}
    delivered = [o for tp, off, o in outputs if off < committed[tp]]
    lost = [o for tp, off, o in outputs if off >= committed[tp]]
    second = WorkerRuntime(refdata, TableStates(table), settings, 8, idle_after=1e9)
    resent = second.on_assigned({0, 1, 2, 3, 4, 5, 6, 7}, committed)
    return delivered, lost, resent


def keys(outcomes) -> tuple[set, set]:
    cdrs = {(c.id, c.revision) for o in outcomes for c in o.cdrs}
    dead = {(d.source, d.reason) for o in outcomes for d in o.dead}
    return cdrs, dead


def test_recovery_resends_exactly_the_outputs_of_uncommitted_messages():
    delivered, lost, resent = crash_and_recover(0.5)
    lost_cdrs, lost_dead = keys(lost)
    assert lost_cdrs and lost_dead, "the crash must lose CDRs and orphan dead letters"
    resent_cdrs, resent_dead = keys([resent])
    assert resent_cdrs == lost_cdrs
    assert resent_dead == lost_dead
    # nothing delivered before the commit is sent again
    assert not resent_cdrs & keys(delivered)[0]


def test_nothing_is_resent_when_everything_was_committed():
    _, lost, resent = crash_and_recover(1.0)
    assert not lost and not resent.cdrs and not resent.dead


def test_without_any_commit_every_settled_state_is_resent():
    delivered, lost, resent = crash_and_recover(0.0)
    assert not delivered
    assert keys([resent]) == keys(lost)


def test_the_resent_cdr_is_the_one_first_sent():
    _, lost, resent = crash_and_recover(0.5)
    first = {(c.id, c.revision): c for o in lost for c in o.cdrs}
    assert all(first[(c.id, c.revision)] == c for c in resent.cdrs)


def test_recovered_states_are_read_back_from_table_bytes():
    # TableStates keeps nothing but bytes in the table: what recovery restores is all there is
    states = TableStates({})
    correlator = Correlator(states, SETTINGS)
    correlator.process(valid(outbound_call("b1")[0]), 0)
    assert isinstance(states.table[b"b1"], bytes)
    states.cache.clear()
    assert isinstance(states["b1"], CallState) and states["b1"].start is not None
