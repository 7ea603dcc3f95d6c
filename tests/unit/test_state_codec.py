"""The disk store's call state encoding (pipeline/state/codec.py): any state comes back equal,
field by field and type by type, including what `==` does not look at (`Event.extra`)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.correlate import CallState, Deadlines, HeldEvent
from pipeline.core.events import attributes, parse_event
from pipeline.core.model import Event, Source
from pipeline.state.codec import decode_state, encode_state, settled_since

# As `parse_ts` makes them: aware UTC, fold 0 (a fold of 1 means nothing in UTC).
TIMES = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
).map(lambda t: t.replace(fold=0))
TEXT = st.text(max_size=40)
INT64 = st.integers(-(2**63), 2**63 - 1)
SOURCES = st.builds(Source, TEXT, st.integers(-(2**31), 2**31 - 1), INT64)  # Kafka's types
OPTIONAL = {
    "gateway": TEXT,
    "direction": st.sampled_from(["inbound", "outbound"]),
    "account": TEXT,
    "source": TEXT,
    "destination": TEXT,
    "did": TEXT,
    "trunk": TEXT,
    "disconnect_code": st.integers(),  # 100..699 by the schema; any int round-trips
    "disconnect_reason": TEXT,
    "disconnect_initiator": st.sampled_from(["origination", "destination"]),
}
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)


@st.composite
def helds(draw, kind: str, call_id: str) -> HeldEvent:
    fields = {name: draw(st.none() | strategy) for name, strategy in OPTIONAL.items()}
    ts = draw(TIMES)
    extra = draw(st.dictionaries(TEXT.map(lambda k: f"x-{k}"), JSON, max_size=3))
    event_id = draw(st.just(call_id) | TEXT)
    event = Event(kind, event_id, ts, draw(st.text("0123456789", max_size=12)), **fields)
    if extra:
        # Unknown fields are read back from the raw message, where the parser found them.
        raw = orjson.dumps({"event": kind, "id": event_id, "ts": ts.isoformat(), **extra})
        event = Event(kind, event_id, ts, event.ts_sub_us, **fields, extra=extra)
    else:
        raw = draw(st.binary(max_size=300) | st.just(b"x" * 70_000))  # 64 KiB is allowed
    return HeldEvent(event, raw, draw(SOURCES))


@st.composite
def states(draw) -> CallState:
    call_id = draw(TEXT)
    start, connect, end = (draw(st.none() | helds(k, call_id)) for k in ("start", "connect", "end"))
    return CallState(
        call_id,
        start,
        connect,
        end,
        draw(st.none() | TIMES),
        draw(INT64),
        draw(st.none() | TIMES),
        draw(st.none() | SOURCES),
    )


def strict(state: CallState) -> list:
    """Every value of the state with its type, extras included (`==` skips them)."""
    out: list = []
    for name in CallState.__slots__:
        value = getattr(state, name)
        if isinstance(value, HeldEvent):
            event = value.event
            out.append([(type(getattr(event, n)), getattr(event, n)) for n in Event.__slots__])
            out.append((value.raw, type(value.raw), value.source))
        else:
            out.append((type(value), value))
    for t in (state.timed_out_at, state.orphaned_at, *(h.event.ts for h in state.held())):
        if t is not None:
            out.append((t.tzinfo is UTC, t.fold))
    return out


@settings(max_examples=400, deadline=None)
@given(states())
def test_any_state_round_trips(state):
    data = encode_state(state)
    back = decode_state(data)
    assert back == state
    assert strict(back) == strict(state)
    assert encode_state(back) == data


T = datetime(2026, 3, 2, tzinfo=UTC)


@settings(max_examples=300, deadline=None)
@given(states())
def test_a_settled_state_tells_its_memory_window_without_a_decode(state):
    """`settled_since` + memory is `CallState.deadline` of every settled state."""
    if not state.settled:  # made an orphan's tombstone
        connect = state.connect or HeldEvent(Event("connect", state.id, T), b"", Source("t", 0, 0))
        state = dataclasses.replace(state, connect=connect, orphaned_at=T)
    due, kind = state.deadline(Deadlines())
    assert kind == "forget"
    assert settled_since(encode_state(state)) + Deadlines().memory == due


def test_a_parsed_call_round_trips_with_its_unknown_fields():
    ts = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
    raw = orjson.dumps(
        {
            "event": "start",
            "id": "gw-1",
            "ts": "2026-03-02T10:00:00.1234567891Z",
            "gateway": "fra1",
            "direction": "outbound",
            "account": "acme",
            "source": "+441234567890",
            "destination": "4930123456",
            "trunk": "T1",
            "vendor": {"deep": [1, 2, {"x": None}]},
            "connect_hint": "ignored",
        }
    )
    start = parse_event(raw, now=ts)
    assert start.extra and start.ts_sub_us == "7891" and start.source == "441234567890"
    end_raw = b'{"event":"end","id":"gw-1","ts":"2026-03-02T10:01:00Z","disconnect_code":200,'
    end_raw += b'"disconnect_reason":"Normal","disconnect_initiator":"origination"}'
    end = parse_event(end_raw, now=ts + timedelta(minutes=2))
    state = CallState(
        "gw-1",
        HeldEvent(start, raw, Source("sip.call.start", 3, 17)),
        end=HeldEvent(end, end_raw, Source("sip.call.end", 3, 9)),
        revision=1,
        trigger=Source("sip.call.end", 3, 9),
    )
    back = decode_state(encode_state(state))
    assert strict(back) == strict(state)
    assert back.start is not None and back.start.event.extra == start.extra
    assert set(start.extra) == {"vendor", "connect_hint"} - attributes()["start"]


def test_an_unknown_version_is_refused():
    data = bytearray(encode_state(CallState("x")))
    data[0] = 99
    with pytest.raises(ValueError, match="version 99"):
        decode_state(bytes(data))
