"""The validation fast path (`events.fast_validators`) against fastjsonschema, and the
timestamp fast path against the general one.

The fast check is generated from the schema files and may only ACCEPT: whatever it accepts,
fastjsonschema must accept too, and the `Event` built on the fast path must equal the one the
generic path builds. Whatever it does not accept goes through fastjsonschema unchanged.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import fastjsonschema
import orjson
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pipeline.core import events
from pipeline.core.events import KINDS, InvalidEvent, event_from_dict, parse_ts, validators

from .test_hostile_events import VALID, field_values, json_values, mutated_events

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def as_parsed(obj: Any) -> Any:
    """What the parser makes of `obj` written as JSON (NaN literals are refused there)."""
    try:
        return orjson.loads(json.dumps(obj).encode())
    except orjson.JSONDecodeError:
        assume(False)


def schema_accepts(kind: str, data: Any) -> bool:
    try:
        validators()[kind](data)
    except fastjsonschema.JsonSchemaValueException:
        return False
    return True


def generic_event(data: dict[str, Any]) -> events.Event | str:
    """`event_from_dict` with the fast path switched off (fastjsonschema only)."""
    kinds = events._kinds()
    saved = dict(kinds)
    try:
        for kind, (validate, _, _) in saved.items():
            kinds[kind] = (validate, None, None)
        return event_from_dict(data, now=NOW)
    except InvalidEvent as exc:
        return exc.reason
    finally:
        kinds.update(saved)


def fast_or_reason(data: dict[str, Any]) -> events.Event | str:
    try:
        return event_from_dict(data, now=NOW)
    except InvalidEvent as exc:
        return exc.reason


def same_outcome(data: dict[str, Any]) -> None:
    fast, generic = fast_or_reason(data), generic_event(data)
    assert fast == generic
    if isinstance(fast, events.Event):
        assert isinstance(generic, events.Event)
        assert fast.extra == generic.extra and list(fast.extra) == list(generic.extra)
        assert type(fast.disconnect_code) is type(generic.disconnect_code)
        assert repr(fast) == repr(generic)


def test_every_kind_has_a_fast_path_and_it_takes_the_examples():
    fast = events.fast_validators()
    assert set(fast) == set(KINDS)
    for base in VALID:
        assert fast[base["event"]](dict(base))
    for kind in KINDS:
        for example in events._load_schema(f"{kind}.schema.json").get("examples", []):
            assert fast[kind](example), example


FUZZ = settings(max_examples=1500, deadline=None)


@FUZZ
@given(mutated_events())
def test_fast_path_accepts_only_what_the_schema_accepts(case):
    _, obj = case
    data = as_parsed(obj)
    for kind, accept in events.fast_validators().items():
        if accept(data):
            assert schema_accepts(kind, data), (kind, data)
    same_outcome(data)


@FUZZ
@given(
    st.sampled_from(VALID),
    st.dictionaries(
        st.sampled_from(sorted({k for e in VALID for k in e} | {"did", "trunk"})),
        field_values,
        max_size=4,
    ),
)
def test_replaced_fields_same_outcome(base, changes):
    data = as_parsed({**base, **changes})
    for kind, accept in events.fast_validators().items():
        if accept(data):
            assert schema_accepts(kind, data), (kind, data)
    same_outcome(data)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_any_json_value_is_never_accepted_wrongly(value):
    for kind, accept in events.fast_validators().items():
        if accept(value) if isinstance(value, dict) else False:
            assert schema_accepts(kind, value)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "additionalProperties": False},
        {"type": "object", "properties": {"x": {"type": "number"}}},
        {"type": "object", "properties": {"x": {"enum": [1, 2]}}},
        {"type": "object", "properties": {"x": {"type": "string", "format": "email"}}},
        {"type": "object", "allOf": [{"if": {"required": ["x"]}, "then": {}}]},
        {"type": "object", "allOf": [{"if": {}, "then": {}, "else": {}}]},
        {"type": "object", "properties": {"x": {"$ref": "http://elsewhere/s.json#/x"}}},
        {"type": "object", "properties": {"x": {"type": "string", "pattern": "^unknown$"}}},
    ],
)
def test_constructs_the_generator_does_not_know_leave_no_fast_path(schema, monkeypatch):
    monkeypatch.setattr(events, "_load_schema", lambda name: schema)
    with pytest.raises(events._Unsupported):
        events._FastCheck({}).build("x.schema.json")


# --------------------------------------------------------------------------- timestamps


def parse_ts_reference(text: str) -> datetime:
    """parse_ts as it was before the fast path (the general path, always taken)."""
    text = text.upper()
    if "." in text:
        head, _, frac = text.partition(".")
        digits = len(frac) - len(frac.lstrip("0123456789"))
        if digits > 6:
            text = f"{head}.{frac[:6]}{frac[digits:]}"
    leap = text[17:19] == "60"
    if leap:
        text = f"{text[:17]}59{text[19:]}"
    try:
        ts = datetime.fromisoformat(text).astimezone(UTC)
        if leap:
            if (ts.hour, ts.minute) != (23, 59):
                raise ValueError("second 60 is only valid as a leap second at 23:59:60 UTC")
            ts += timedelta(seconds=1)
    except OverflowError:
        raise ValueError("out of the representable range of years 1..9999 in UTC") from None
    return ts


def outcome(parse, text: str) -> object:
    try:
        return ("ok", parse(text), parse(text).tzinfo)
    except ValueError as exc:
        return ("error", str(exc))


ts_texts = st.builds(
    lambda date, sep, time, frac, zone: f"{date}{sep}{time}{frac}{zone}",
    st.sampled_from(["2026-11-25", "2016-12-31", "0001-01-01", "9999-12-31", "2026-02-30"]),
    st.sampled_from(["T", "t", " ", "x"]),
    st.sampled_from(["10:00:00", "23:59:60", "23:59:59", "00:00:60", "24:00:00", "1:2:3"]),
    st.sampled_from(["", "."]).flatmap(
        lambda dot: st.text("0123456789a٣", max_size=12).map(lambda d: dot + d)
    ),
    st.sampled_from(["Z", "z", "+00:00", "-05:30", "+14:00", "", "+0000", "Zx"]),
)


@settings(max_examples=3000, deadline=None)
@given(ts_texts | st.text(max_size=40))
def test_parse_ts_fast_path_is_the_general_one(text):
    assert outcome(parse_ts, text) == outcome(parse_ts_reference, text)


def test_future_limit_read_once_a_second_is_rechecked_before_refusing(monkeypatch):
    soon = datetime.now(UTC) + timedelta(hours=23)
    data = {"event": "connect", "id": "c1", "ts": soon.isoformat()}
    monkeypatch.setattr(events, "_FUTURE", [float("inf"), events.EARLIEST_TS])  # stale, low
    assert event_from_dict(data).ts == soon
    late = datetime.now(UTC) + timedelta(days=1, minutes=5)
    with pytest.raises(InvalidEvent, match="in the future"):
        event_from_dict({**data, "ts": late.isoformat()})
