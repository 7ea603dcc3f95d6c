"""Event parsing and validation against the JSON Schemas."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.events import MAX_MESSAGE_BYTES, InvalidEvent, parse_event, validators

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)

START = {
    "event": "start",
    "id": "gw-fra1-1",
    "ts": "2026-11-25T10:00:00.120Z",
    "gateway": "fra1",
    "direction": "outbound",
    "account": "acc-1001",
    "source": "12015550123",
    "destination": "442079460123",
    "trunk": "Outbound Trunk 1",
}
INBOUND = {
    "event": "start",
    "id": "gw-ams1-2",
    "ts": "2026-11-25T11:00:00+01:00",
    "gateway": "ams1",
    "direction": "inbound",
    "account": "acc-1002",
    "source": "",
    "did": "442079460123",
    "destination": "sip:1001@pbx.example.com",
}
CONNECT = {"event": "connect", "id": "gw-fra1-1", "ts": "2026-11-25T10:00:04.5Z"}
END = {
    "event": "end",
    "id": "gw-fra1-1",
    "ts": "2026-11-25T10:01:36.981+00:00",
    "disconnect_code": 200,
    "disconnect_reason": "Bye",
    "disconnect_initiator": "origination",
}


def parse(obj: object) -> object:
    return parse_event(orjson.dumps(obj), now=NOW)


def reason(raw: bytes) -> str:
    with pytest.raises(InvalidEvent) as info:
        parse_event(raw, now=NOW)
    return info.value.reason


def test_valid_events_parse_to_utc():
    start = parse(START)
    assert start.kind == "start" and start.trunk == "Outbound Trunk 1"
    assert start.ts == datetime(2026, 11, 25, 10, 0, 0, 120000, tzinfo=UTC)
    inbound = parse(INBOUND)
    assert inbound.ts == datetime(2026, 11, 25, 10, 0, tzinfo=UTC)  # +01:00 normalised
    assert inbound.did == "442079460123" and inbound.source == ""
    assert parse(CONNECT).ts == datetime(2026, 11, 25, 10, 0, 4, 500000, tzinfo=UTC)
    end = parse(END)
    assert (end.disconnect_code, end.disconnect_initiator) == (200, "origination")


@pytest.mark.parametrize(
    "destination", ["SIP:+33142685300@gw", "Tel:+33142685300", "SIPS:1001@pbx.example.com"]
)
def test_uri_schemes_are_case_insensitive(destination: str):
    """RFC 3261 and RFC 3966: a URI's scheme may be written in any case."""
    assert parse({**INBOUND, "destination": destination}).destination == destination


def test_schema_examples_are_valid():
    from pipeline.core.events import _load_schema

    for kind in ("start", "connect", "end"):
        examples = _load_schema(f"{kind}.schema.json")["examples"]
        assert examples
        for example in examples:
            validators()[kind].validate(example)


def test_nanosecond_timestamps_and_extra_fields_are_kept():
    event = parse({**CONNECT, "ts": "2026-11-25T10:00:04.123456789Z", "sip_call_id": "abc"})
    assert event.ts.microsecond == 123456
    assert event.extra == {"sip_call_id": "abc"}


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({**START, "trunk": None}, "trunk"),
        ({k: v for k, v in START.items() if k != "trunk"}, "trunk"),
        ({**START, "destination": "sip:x@y"}, "destination"),
        ({**START, "direction": "sideways"}, "direction"),
        ({**START, "source": "x" * 129}, "source"),
        ({**START, "destination": "+4930abc"}, "destination"),
        ({**INBOUND, "did": "+0049301234"}, "did"),
        ({k: v for k, v in INBOUND.items() if k != "did"}, "did"),
        ({**START, "id": ""}, "id"),
        ({**START, "id": "x" * 129}, "id"),
        ({**START, "ts": "2026-11-25 10:00:00"}, "ts"),
        ({**START, "ts": 1764064800}, "ts"),
        ({**CONNECT, "ts": "2026-02-30T10:00:00Z"}, "ts"),
        ({**END, "disconnect_code": 99}, "disconnect_code"),
        ({**END, "disconnect_code": 700}, "disconnect_code"),
        ({**END, "disconnect_code": "200"}, "disconnect_code"),
        ({**END, "disconnect_code": 200.5}, "disconnect_code"),
        ({**END, "disconnect_initiator": "callee"}, "disconnect_initiator"),
        ({**CONNECT, "event": "ring"}, "event"),
        ({k: v for k, v in CONNECT.items() if k != "event"}, "event"),
        ({**CONNECT, "ts": "1999-12-31T23:59:59Z"}, "before 2000"),
        ({**CONNECT, "ts": "2026-11-27T12:00:01Z"}, "future"),
    ],
)
def test_invalid_events_name_field_and_problem(obj, expected):
    assert expected in reason(orjson.dumps(obj))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"not json", "not valid JSON"),
        (b'{"event": "connect", "id": "a"', "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'"start"', "not a JSON object"),
        (b"\xff\xfe{}", "not valid JSON"),
        (b'{"event":"connect","id":"a","ts":NaN}', "not valid JSON"),
        (
            b'{"event":"end","id":"a","ts":"2026-11-25T10:00:00Z","disconnect_code":1e999,'
            b'"disconnect_reason":"","disconnect_initiator":"origination"}',
            "infinity",
        ),
        (
            b'{"event":"end","id":"a","ts":"2026-11-25T10:00:00Z","disconnect_code":'
            + b"9" * 400
            + b',"disconnect_reason":"","disconnect_initiator":"origination"}',
            "not valid JSON",
        ),
        (b"[" * 100_000 + b"]" * 100_000, "too large"),
        (b"[" * 5000 + b"]" * 5000, "not valid JSON"),
    ],
)
def test_hostile_bytes_are_rejected_with_a_reason(raw, expected):
    assert expected in reason(raw)


def test_message_size_limit_is_exact():
    pad = "x" * (MAX_MESSAGE_BYTES - len(orjson.dumps({**CONNECT, "pad": ""})))
    exact = orjson.dumps({**CONNECT, "pad": pad})
    assert len(exact) == MAX_MESSAGE_BYTES
    assert parse_event(exact, now=NOW).extra["pad"] == pad
    assert "too large" in reason(orjson.dumps({**CONNECT, "pad": pad + "x"}))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_crash(raw):
    try:
        parse_event(raw, now=NOW)
    except InvalidEvent as exc:
        assert exc.reason


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(list(START) + list(END) + ["x"]),
        st.none()
        | st.booleans()
        | st.integers(-(2**63), 2**63 - 1)
        | st.floats()
        | st.text(max_size=20),
    )
)
def test_random_objects_are_accepted_or_rejected_with_reason(obj):
    try:
        event = parse_event(orjson.dumps(obj), now=NOW)
    except InvalidEvent as exc:
        assert exc.reason
    else:
        assert event.kind == obj["event"] and event.id == obj["id"]
