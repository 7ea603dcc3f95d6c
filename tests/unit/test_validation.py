"""Event validation (jsonschema-rs over the schema files) against an independent
implementation of JSON Schema draft 7 (fastjsonschema, a test-only reference), the `Event` it
builds against the dataclass's own constructor, and the timestamp fast path against the
general one.

Both validators read the same `schemas/*.json`, so any disagreement is a deviation of one of
them from the contract (a regex dialect, integer semantics) and shows here first.
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
from pipeline.core.events import (
    KINDS,
    NORMALISE,
    InvalidEvent,
    attributes,
    event_from_dict,
    parse_ts,
    sub_microsecond_digits,
    validators,
)
from pipeline.core.model import Event

from .test_hostile_events import VALID, field_values, json_values, mutated_events

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def as_parsed(obj: Any) -> Any:
    """What the parser makes of `obj` written as JSON (NaN literals are refused there)."""
    try:
        return orjson.loads(json.dumps(obj).encode())
    except orjson.JSONDecodeError:
        assume(False)


def _resolve(uri: str) -> dict[str, Any]:
    return events._load_schema(uri.removeprefix(events.SCHEMA_BASE_URI))


REFERENCE = {
    kind: fastjsonschema.compile(
        events._load_schema(f"{kind}.schema.json"), handlers={"https": _resolve}
    )
    for kind in KINDS
}


def reference_accepts(kind: str, data: Any) -> bool:
    try:
        REFERENCE[kind](data)
    except fastjsonschema.JsonSchemaValueException:
        return False
    return True


def reference_event(data: dict[str, Any]) -> Event | None:
    """The `Event` of `data` built the plain way (the dataclass's constructor), None if the
    reference validator refuses it or its timestamp is out of bounds."""
    kind = data.get("event")
    if kind not in KINDS or not reference_accepts(kind, data):
        return None
    try:
        ts = parse_ts(data["ts"])
    except ValueError:
        return None
    if ts < events.EARLIEST_TS or ts > NOW + events.MAX_FUTURE_SKEW:
        return None
    own = attributes()[kind]
    attrs = {k: data[k] for k in own if k in data}
    for name, normalise in NORMALISE.get(kind, {}).items():
        if name in attrs:
            attrs[name] = normalise(attrs[name])
    if type(attrs.get("disconnect_code")) is float:
        attrs["disconnect_code"] = int(attrs["disconnect_code"])
    extra = {k: v for k, v in data.items() if k not in own and k not in ("event", "ts")}
    ts_sub_us = sub_microsecond_digits(data["ts"])
    return Event(kind=kind, ts=ts, ts_sub_us=ts_sub_us, extra=extra, **attrs)


def same_as_reference(data: Any) -> None:
    if isinstance(data, dict) and isinstance(data.get("event"), str):
        for kind in KINDS:
            assert validators()[kind].is_valid(data) == reference_accepts(kind, data), (kind, data)
    if not isinstance(data, dict):
        return
    try:
        got: Event | str = event_from_dict(data, now=NOW)
    except InvalidEvent as exc:
        got = exc.reason
    expected = reference_event(data)
    if expected is None:
        assert isinstance(got, str) and got, data
        return
    assert isinstance(got, Event), (got, data)
    assert got == expected and repr(got) == repr(expected)
    assert got.extra == expected.extra and list(got.extra) == list(expected.extra)
    assert type(got.disconnect_code) is type(expected.disconnect_code)


def test_examples_and_valid_events_are_accepted():
    for base in VALID:
        same_as_reference(dict(base))
        assert validators()[base["event"]].is_valid(dict(base))
    for kind in KINDS:
        for example in events._load_schema(f"{kind}.schema.json").get("examples", []):
            assert validators()[kind].is_valid(example), example


FUZZ = settings(max_examples=1500, deadline=None)


@FUZZ
@given(mutated_events())
def test_mutated_events_decided_as_the_reference_decides(case):
    _, obj = case
    same_as_reference(as_parsed(obj))


@FUZZ
@given(
    st.sampled_from(VALID),
    st.dictionaries(
        st.sampled_from(sorted({k for e in VALID for k in e} | {"did", "trunk"})),
        field_values,
        max_size=4,
    ),
)
def test_replaced_fields_decided_as_the_reference_decides(base, changes):
    same_as_reference(as_parsed({**base, **changes}))


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_any_json_value_decided_as_the_reference_decides(value):
    same_as_reference(value)


def _properties(node: Any) -> list[dict[str, Any]]:
    """Every property schema below `node` ($refs resolved into the schema files)."""
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        if "$ref" in node:
            file, _, pointer = node["$ref"].removeprefix(events.SCHEMA_BASE_URI).partition("#")
            target: Any = events._load_schema(file)
            for part in pointer.strip("/").split("/"):
                target = target[part]
            return _properties(target) + [target]
        for sub in node.get("properties", {}).values():
            found += [sub, *_properties(sub)]
        for value in node.values():
            if isinstance(value, (dict, list)):
                found += _properties(value)
    elif isinstance(node, list):
        for value in node:
            found += _properties(value)
    return found


@pytest.mark.parametrize("kind", KINDS)
def test_the_schemas_judge_no_container_and_no_other_property(kind):
    """What `_flattened` relies on: judging a message as its own fields with containers
    emptied gives the schema's verdict."""
    schema = events._load_schema(f"{kind}.schema.json")
    text = json.dumps(schema)
    for keyword in ("additionalProperties", "patternProperties", "propertyNames", 'Properties"'):
        assert keyword not in text
    for prop in _properties(schema):
        assert prop.get("type") not in ("array", "object"), prop
        assert not {"items", "properties", "contains"} & set(prop), prop


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("container", [list, dict])
def test_nesting_beyond_the_validator_keeps_the_verdict(kind, container):
    base = next(dict(e) for e in VALID if e["event"] == kind)
    deep: Any = "x"
    for _ in range(1000):
        deep = [deep] if container is list else {"k": deep}
    event = event_from_dict({**base, "pad": deep}, now=NOW)  # an unknown field: accepted
    assert event.extra["pad"] == deep
    with pytest.raises(InvalidEvent, match=f"^{kind}: id: an? (array|object) "):
        event_from_dict({**base, "id": deep}, now=NOW)


def test_reasons_are_short_whatever_the_value():
    base = next(dict(e) for e in VALID if e["event"] == "end")
    for value in ("x" * 60_000, "é" * 40_000, 2**63, -(2**63)):
        try:
            event_from_dict({**base, "disconnect_reason": value, "disconnect_code": value}, now=NOW)
        except InvalidEvent as exc:
            assert len(exc.reason) < 300, exc.reason[:400]
        else:
            raise AssertionError(value)


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


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("key", ["\0", "", " ", "\uffff"])
def test_unusual_unknown_keys_stay_in_extra(kind, key):
    """No key a message may hold reaches an attribute of another kind."""
    base = next(dict(e) for e in VALID if e["event"] == kind)
    event = event_from_dict({**base, key: []}, now=NOW)
    assert event.extra == {key: []}
    assert event == reference_event({**base, key: []})
