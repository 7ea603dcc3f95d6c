"""Hostile gateway messages: the parser and the engine survive anything.

Every message either becomes an `Event` whose typed fields hold what the schema promises, or is
refused with `InvalidEvent` carrying a non-empty, human-readable reason; through `Engine.feed` a
refused message is exactly one "invalid" dead letter with its original bytes. Nothing raises
anything else and nothing takes long (SPEC section 1). Calls whose gateway clocks disagree are
rated as SPEC section 3 says (see the "clock skew" tests at the end).
"""

from __future__ import annotations

import itertools
import json
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core import events
from pipeline.core.correlate import DeadLetter
from pipeline.core.engine import Engine
from pipeline.core.events import (
    EARLIEST_TS,
    MAX_FUTURE_SKEW,
    MAX_MESSAGE_BYTES,
    InvalidEvent,
    parse_event,
)
from pipeline.core.model import Event, Source
from pipeline.core.refdata import RefDataHolder

from .test_events import CONNECT, END

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "config"
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
TIME_BOUND = 0.5  # seconds any single message may take, however hostile

START = {
    "event": "start",
    "id": "gw-fra1-1",
    "ts": "2026-11-25T10:00:00.120Z",
    "gateway": "fra1",
    "direction": "outbound",
    "account": "acc-1002",
    "source": "12015550123",
    "destination": "447700123456",
    "trunk": "Outbound Trunk 2",
}
INBOUND = {
    "event": "start",
    "id": "gw-fra1-1",
    "ts": "2026-11-25T11:00:00+01:00",
    "gateway": "ams1",
    "direction": "inbound",
    "account": "acc-1001",
    "source": "4915123456789",
    "did": "18005550101",
    "destination": "tel:+44-20-7946-0123",
}
VALID = (START, INBOUND, CONNECT, END)
FIELDS = sorted({k for e in VALID for k in e})
OWN_FIELDS = {
    "start": {"id", "gateway", "direction", "account", "source", "destination", "did", "trunk"},
    "connect": {"id"},
    "end": {"id", "disconnect_code", "disconnect_reason", "disconnect_initiator"},
}


@pytest.fixture(scope="module")
def refdata() -> RefDataHolder:
    return RefDataHolder(CONFIG)


def check_event(event: Event) -> None:
    """What an accepted event guarantees to the rest of the pipeline, field by field."""
    assert isinstance(event, Event)
    assert event.kind in OWN_FIELDS
    assert type(event.id) is str and 1 <= len(event.id) <= 128
    assert event.ts.tzinfo is UTC
    assert EARLIEST_TS <= event.ts <= NOW + MAX_FUTURE_SKEW
    own = OWN_FIELDS[event.kind]
    for name in OWN_FIELDS["start"] | OWN_FIELDS["end"]:
        if name not in own:
            # another kind's field is never taken into a typed attribute unchecked
            assert getattr(event, name) is None, name
    if event.kind == "start":
        for name in ("gateway", "account", "source", "destination"):
            assert type(getattr(event, name)) is str, name
        assert event.direction in ("inbound", "outbound")
        assert event.source.isascii() and (event.source.isdigit() or event.source == "")
        if event.direction == "outbound":
            assert type(event.trunk) is str and event.destination.isdigit()
        else:
            assert type(event.did) is str and event.did.isdigit()
    if event.kind == "end":
        assert type(event.disconnect_code) is int and 100 <= event.disconnect_code <= 699
        assert type(event.disconnect_reason) is str
        assert event.disconnect_initiator in ("origination", "destination")
    repr(event)  # printable, however deeply nested its extra fields are


def parse_or_reason(raw: bytes) -> Event | str:
    """The event, or the (checked non-empty) reason it was refused; anything else fails."""
    try:
        event = parse_event(raw, now=NOW)
    except InvalidEvent as exc:
        assert isinstance(exc.reason, str) and exc.reason.strip()
        assert str(exc) == exc.reason
        return exc.reason
    check_event(event)
    return event


def reason(raw: bytes) -> str:
    result = parse_or_reason(raw)
    assert isinstance(result, str), f"accepted: {result!r}"
    return result


def feed_checked(engine: Engine, raws: list[bytes]) -> tuple[list, list[DeadLetter]]:
    """Feed messages one by one; each refused one must come out as exactly one invalid
    dead letter with its original bytes and source, and nothing else."""
    cdrs, dead = [], []
    for offset, raw in enumerate(raws):
        expected = parse_or_reason(raw)
        source = Source("sip.call.test", 3, offset)
        out = engine.feed(raw, source, now=NOW)
        if isinstance(expected, str):
            assert out.cdrs == []
            assert len(out.dead) == 1
            letter = out.dead[0]
            assert (letter.kind, letter.raw, letter.source) == ("invalid", raw, source)
            assert letter.reason == expected
        else:
            assert all(d.kind != "invalid" for d in out.dead)
        cdrs.extend(out.cdrs)
        dead.extend(out.dead)
    return cdrs, dead


# --------------------------------------------------------------------------- fuzzing

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()  # unbounded: json.dumps writes 10**30 as digits
    | st.floats()  # NaN and +-Infinity too: json.dumps writes them as bare literals
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
# Values close to valid ones, so that mutated messages often pass and reach the engine.
plausible = st.sampled_from(
    [
        "", "0", "12015550123", "442079460123", "+442079460123", "sip:1001@pbx", "tel:+1-201",
        "sips:+4915123456789@gw", "inbound", "outbound", "start", "connect", "end",
        "origination", "destination", "2026-11-25T10:00:10Z", "2026-11-25T09:59:59.999999999Z",
        "2016-12-31T23:59:60Z", "2026-11-25t10:00:00z", "Outbound Trunk 1", "nope", "x" * 129,
        100, 200, 200.0, 486, 487, 699, 700, 99, -0.0, 2**64, "\x00", "\ud83d\ude00",
    ]
)  # fmt: skip
field_values = json_values | plausible


@st.composite
def mutated_events(draw) -> tuple[dict, dict]:
    """A valid event with some fields replaced, some dropped and some added."""
    base = draw(st.sampled_from(VALID))
    obj = dict(base)
    for key in draw(st.lists(st.sampled_from(FIELDS), unique=True, max_size=3)):
        obj[key] = draw(field_values)
    for key in draw(st.lists(st.sampled_from(sorted(base)), unique=True, max_size=2)):
        obj.pop(key, None)
    obj.update(draw(st.dictionaries(st.text(max_size=10), json_values, max_size=3)))
    return base, obj


FUZZ = settings(max_examples=300, deadline=None)


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes(refdata, raw):
    feed_checked(Engine(refdata), [raw])


@FUZZ
@given(json_values)
def test_random_json_values(refdata, value):
    raw = json.dumps(value).encode()  # allow_nan: NaN/Infinity literals are hostile input too
    feed_checked(Engine(refdata), [raw])
    if not isinstance(value, dict):
        assert "not a JSON object" in reason(raw) or "not valid JSON" in reason(raw)


@FUZZ
@given(mutated_events())
def test_mutated_events_through_the_engine(refdata, case):
    """The mutated event, then the rest of its call unchanged: if the mutant is accepted,
    the call is correlated and rated (build_cdr sees the mutated values)."""
    base, obj = case
    others = [e for e in (START, CONNECT, END) if e["event"] != base["event"]]
    raws = [json.dumps(obj).encode()] + [orjson.dumps(e) for e in others]
    cdrs, dead = feed_checked(Engine(refdata), raws)
    for cdr in cdrs:
        assert cdr.id == START["id"] and cdr.duration >= 0


@settings(max_examples=100, deadline=None)
@given(mutated_events())
def test_mutated_events_are_accepted_or_refused_by_the_field(case):
    _, obj = case
    raw = json.dumps(obj).encode()
    result = parse_or_reason(raw)
    if isinstance(result, Event):
        data = orjson.loads(raw)  # what the parser saw (10**20 is a float to orjson)
        assert result.kind == data["event"] and result.id == data["id"]
        known = {"event", "ts"} | OWN_FIELDS[result.kind]
        assert result.extra == {k: v for k, v in data.items() if k not in known}


# --------------------------------------------------------------------------- no hang

DEEP = 1000  # orjson refuses nesting deeper than 1024


def message(**fields) -> bytes:
    return orjson.dumps({**CONNECT, **fields})


def end_with_code(literal: bytes) -> bytes:
    return (
        b'{"event":"end","id":"a","ts":"2026-11-25T10:00:00Z","disconnect_code":'
        + literal
        + b',"disconnect_reason":"Bye","disconnect_initiator":"origination"}'
    )


CONNECT_RAW = orjson.dumps(CONNECT)
PATHOLOGICAL = [
    # (name, raw, word the reason must contain)
    ("valid JSON over 64 KiB", message(pad="x" * MAX_MESSAGE_BYTES), "too large"),
    ("garbage over 64 KiB", b"\xff\x00{[" * 20_000, f"> {MAX_MESSAGE_BYTES}"),
    ("100_000 nested [", b"[" * 100_000 + b"]" * 100_000, "too large"),
    ('nested {"a":...} over 64 KiB', b'{"a":' * 20_000 + b"1" + b"}" * 20_000, "too large"),
    ("60_000 nested [ under 64 KiB", b"[" * 60_000, "depth"),
    ('10_000 nested {"a":...}', b'{"a":' * 10_000 + b"1" + b"}" * 10_000, "depth"),
    ("invalid UTF-8 in a value", CONNECT_RAW.replace(b'"gw-fra1-1"', b'"gw\xff1"'), "UTF-8"),
    ("invalid UTF-8 in a key", CONNECT_RAW.replace(b'"id"', b'"i\xc3\x28d"'), "UTF-8"),
    ("overlong UTF-8", CONNECT_RAW.replace(b"gw-fra1", b"gw\xc0\xafra1"), "UTF-8"),
    ("UTF-8 encoded surrogate", CONNECT_RAW.replace(b"gw-", b"gw\xed\xa0\x80"), "UTF-8"),
    ("lone surrogate escape in a value", CONNECT_RAW.replace(b"gw-", b"gw\\ud800"), "surrogate"),
    ("lone surrogate escape in a key", CONNECT_RAW.replace(b'"id"', b'"\\udc00"'), "surrogate"),
    ("NaN", end_with_code(b"NaN"), "not valid JSON"),
    ("Infinity", end_with_code(b"Infinity"), "not valid JSON"),
    ("-Infinity", end_with_code(b"-Infinity"), "not valid JSON"),
    ("1e400", end_with_code(b"1e400"), "infinity"),
    ("a 1000-digit integer", end_with_code(b"1" + b"0" * 1000), "not valid JSON"),
    ("2**64", end_with_code(str(2**64).encode()), "disconnect_code"),
    ("-0", end_with_code(b"-0"), "disconnect_code"),
    ("200.5", end_with_code(b"200.5"), "integer"),
    ("true", end_with_code(b"true"), "integer"),
    ('"200"', end_with_code(b'"200"'), "integer"),
    ("99.0", end_with_code(b"99.0"), "disconnect_code"),
    ("empty object", b"{}", "event"),
    ("null", b"null", "not a JSON object"),
    ("array", b"[1, 2]", "not a JSON object"),
    ("string", b'"start"', "not a JSON object"),
    ("number", b"1", "not a JSON object"),
    ("empty message", b"", "not valid JSON"),
    ("whitespace", b" \n\t", "not valid JSON"),
    ("BOM prefix", b"\xef\xbb\xbf" + CONNECT_RAW, "BOM"),
    ("a NUL byte", b"\x00", "not valid JSON"),
    ("NUL after the object", CONNECT_RAW + b"\x00", "not valid JSON"),
    ("raw NUL inside a string", CONNECT_RAW.replace(b"gw-", b"gw\x00"), "not valid JSON"),
    ("two objects", CONNECT_RAW + b"\n" + CONNECT_RAW, "not valid JSON"),
    ("unknown kind", message(event="ring"), "event"),
    ("kind of wrong type", message(event=["connect"]), "event"),
]


@pytest.mark.parametrize(("name", "raw", "word"), PATHOLOGICAL, ids=[p[0] for p in PATHOLOGICAL])
def test_pathological_messages_are_refused_quickly_with_a_reason(refdata, name, raw, word):
    began = time.perf_counter()
    text = reason(raw)
    assert time.perf_counter() - began < TIME_BOUND
    assert word in text, text
    began = time.perf_counter()
    feed_checked(Engine(refdata), [raw])
    assert time.perf_counter() - began < TIME_BOUND


def test_ten_megabytes_are_refused_by_size_before_parsing(monkeypatch):
    def no_parsing(_raw):
        raise AssertionError("a 10 MB message reached the JSON parser")

    monkeypatch.setattr(events.orjson, "loads", no_parsing)
    for raw in (message(pad="x" * 10_000_000), b"[" * 10_000_000):
        began = time.perf_counter()
        text = reason(raw)
        assert time.perf_counter() - began < TIME_BOUND
        assert "too large" in text and str(len(raw)) in text and str(MAX_MESSAGE_BYTES) in text


def test_nesting_just_under_the_parser_limit_is_kept_and_printable():
    raw = CONNECT_RAW[:-1] + b',"deep":' + b"[" * DEEP + b"1" + b"]" * DEEP + b"}"
    event = parse_or_reason(raw)
    assert isinstance(event, Event)
    value, depth = event.extra["deep"], 0
    while isinstance(value, list):
        value, depth = value[0], depth + 1
    assert (value, depth) == (1, DEEP)
    assert "deep" not in repr(event)  # extra fields are left out of repr (RecursionError)


DEEP_VALUES = {
    "array": b"[" * DEEP + b"]" * DEEP,
    "object": b'{"a":' * DEEP + b"1" + b"}" * DEEP,
}
DEEP_CASES = [
    (base, key, shape)
    for base in VALID
    for key in [*base, "unknown"]
    for shape in sorted(DEEP_VALUES)
]


@pytest.mark.parametrize(
    ("base", "key", "shape"),
    DEEP_CASES,
    ids=[f"{b['event']}-{b.get('direction', '')}-{k}-{s}" for b, k, s in DEEP_CASES],
)
def test_any_field_nested_1000_deep(refdata, base, key, shape):
    """Every field of every kind as a value nested just under orjson's limit: refused with a
    reason naming the field (the reason never repr()s the value: RecursionError), or kept
    as an extra field."""
    raw = orjson.dumps({**base, key: "@@"}).replace(b'"@@"', DEEP_VALUES[shape])
    began = time.perf_counter()
    result = parse_or_reason(raw)
    assert time.perf_counter() - began < TIME_BOUND
    if key == "unknown":
        assert isinstance(result, Event) and "unknown" in result.extra
    else:
        assert isinstance(result, str) and key in result
    feed_checked(Engine(refdata), [raw])


@pytest.mark.parametrize(
    ("literal", "code"), [(b"200", 200), (b"200.0", 200), (b"2e2", 200), (b"699.0", 699)]
)
def test_integral_float_codes_become_int(literal, code):
    """JSON Schema (draft 6+) counts 200.0 as an integer; the event holds the int 200."""
    event = parse_or_reason(end_with_code(literal))
    assert isinstance(event, Event)
    assert event.disconnect_code == code and type(event.disconnect_code) is int


def test_fields_of_another_kind_stay_extra():
    connect = parse_or_reason(message(gateway={"x": 1}, disconnect_code="x", direction=7))
    assert isinstance(connect, Event)
    assert connect.gateway is None and connect.disconnect_code is None
    assert connect.extra == {"gateway": {"x": 1}, "disconnect_code": "x", "direction": 7}
    start = parse_or_reason(orjson.dumps({**START, "disconnect_code": "x"}))
    assert isinstance(start, Event)
    assert start.disconnect_code is None and start.extra == {"disconnect_code": "x"}


def test_duplicate_keys_last_one_wins():
    """orjson (like json.loads) keeps the last of duplicate keys; validation and the event see
    that one value, so what is checked is what is used."""
    raw = b'{"event":"end","id":"a","ts":"2026-11-25T10:00:00Z","event":"connect","id":"b"}'
    event = parse_or_reason(raw)
    assert isinstance(event, Event)
    assert (event.kind, event.id) == ("connect", "b")
    # a valid value hidden behind an invalid one is refused
    raw = b'{"event":"connect","id":"a","ts":"2026-11-25T10:00:00Z","ts":"yesterday"}'
    assert "ts" in reason(raw)


def test_escaped_control_characters_and_astral_characters_are_data():
    """JSON allows any character escaped; SPEC asks only for a string of 1..128 characters."""
    raw = CONNECT_RAW.replace(b'"gw-fra1-1"', rb'"a\u0000b\nc\ud83d\ude00"')
    event = parse_or_reason(raw)
    assert isinstance(event, Event) and event.id == "a\x00b\nc\U0001f600"
    assert "id" in reason(message(id="\U0001f600" * 129))  # 129 characters, 516 bytes


# --------------------------------------------------------------------------- timestamps


def at(ts: str) -> bytes:
    return message(ts=ts)


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


ACCEPTED_TS = [
    (iso(NOW + timedelta(hours=23)), NOW + timedelta(hours=23)),
    (iso(NOW + MAX_FUTURE_SKEW), NOW + MAX_FUTURE_SKEW),
    ("2000-01-01T00:00:00Z", EARLIEST_TS),
    ("2000-01-01T01:00:00+01:00", EARLIEST_TS),
    ("2024-02-29T12:00:00Z", datetime(2024, 2, 29, 12, tzinfo=UTC)),
    ("2026-11-25t10:00:00z", datetime(2026, 11, 25, 10, tzinfo=UTC)),  # RFC 3339 5.6
    ("2026-11-25 10:00:00Z", datetime(2026, 11, 25, 10, tzinfo=UTC)),
    ("2026-11-25T10:00:00-00:00", datetime(2026, 11, 25, 10, tzinfo=UTC)),
    ("2026-11-25T10:00:00.123456789012345Z", datetime(2026, 11, 25, 10, 0, 0, 123456, UTC)),
    # leap seconds (23:59:60 UTC) count as the first instant of the next minute, as in POSIX
    ("2016-12-31T23:59:60Z", datetime(2017, 1, 1, tzinfo=UTC)),
    ("2016-12-31T23:59:60.5Z", datetime(2017, 1, 1, 0, 0, 0, 500000, UTC)),
    ("2017-01-01T05:29:60+05:30", datetime(2017, 1, 1, tzinfo=UTC)),
]


@pytest.mark.parametrize(("ts", "expected"), ACCEPTED_TS)
def test_timestamps_accepted(ts, expected):
    event = parse_or_reason(at(ts))
    assert isinstance(event, Event) and event.ts == expected


REFUSED_TS = [
    # (ts, word the reason must contain besides "ts")
    ("0001-01-01T00:00:00Z", "before 2000"),
    ("1970-01-01T00:00:00Z", "before 2000"),
    ("1999-12-31T23:59:59.999999Z", "before 2000"),
    ("2000-01-01T00:59:59+01:00", "before 2000"),
    ("9999-12-31T23:59:59Z", "future"),
    (iso(NOW + timedelta(days=2)), "future"),
    (iso(NOW + MAX_FUTURE_SKEW + timedelta(microseconds=1)), "future"),
    ("9999-12-31T23:59:59-23:59", "range"),  # beyond year 9999 in UTC
    ("0001-01-01T00:00:00+23:59", "range"),  # before year 1 in UTC
    ("9999-12-31T23:59:60Z", "range"),  # a leap second that would be in year 10000
    ("0000-01-01T00:00:00Z", "year"),
    ("2026-02-30T10:00:00Z", "day is out of range"),
    ("2025-02-29T10:00:00Z", "day is out of range"),
    ("2026-11-25T25:00:00Z", "RFC 3339"),
    ("2026-11-25T24:00:00Z", "RFC 3339"),
    ("2026-11-25T10:60:00Z", "RFC 3339"),
    ("2026-11-25T10:00:61Z", "RFC 3339"),
    ("2026-11-25T10:00:00", "RFC 3339"),  # no offset
    ("2026-11-25T10:00:00+25:00", "RFC 3339"),
    ("2026-11-25T10:00:00+0100", "RFC 3339"),
    ("2026-11-25T10:00:00.Z", "RFC 3339"),
    ("2026-11-25T10:00:00Z\n", "RFC 3339"),
    ("2026-11-25", "RFC 3339"),
    ("", "RFC 3339"),
    ("\u0662\u0660\u0662\u0666-11-25T10:00:00Z", "RFC 3339"),  # Arabic-Indic digits
    ("2026-11-25T10:00:60Z", "leap second"),  # second 60 only at 23:59 UTC
    ("2016-12-31T23:59:60+01:00", "leap second"),  # that is 22:59:60 UTC
]


@pytest.mark.parametrize(("ts", "word"), REFUSED_TS)
def test_timestamps_refused_with_a_reason(ts, word):
    text = reason(at(ts))
    assert text.startswith("connect: ts: ") and word in text, text


@pytest.mark.parametrize("ts", [1764064800, 1764064800.5, None, ["2026-11-25T10:00:00Z"]])
def test_timestamps_of_the_wrong_type(ts):
    text = reason(message(ts=ts))
    assert "ts" in text and "string" in text


# --------------------------------------------------------------------------- clock skew

T0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


def ev(kind: str, seconds: float, **fields) -> bytes:
    ts = iso(T0 + timedelta(seconds=seconds))
    return orjson.dumps({"event": kind, "id": "skew", "ts": ts, **fields})


def outbound(start: float, connect: float | None, end: float, code: int = 200) -> list[bytes]:
    raws = [
        ev(
            "start",
            start,
            gateway="fra1",
            direction="outbound",
            account="acc-1002",
            source="12015550123",
            destination="447700123456",
            trunk="Outbound Trunk 2",  # premium deck, 447 Local: 0.0350/min, 60/60, no fee
        ),
        ev(
            "end",
            end,
            disconnect_code=code,
            disconnect_reason="Bye",
            disconnect_initiator="destination",
        ),
    ]
    if connect is not None:
        raws.insert(1, ev("connect", connect))
    return raws


def final_cdr_in_every_order(refdata, raws: list[bytes]):
    """The call's final CDR, checked to be the same whatever order its events arrive in."""
    finals = []
    for order in itertools.permutations(raws):
        cdrs, dead = feed_checked(Engine(refdata), list(order))
        assert dead == [] and cdrs
        finals.append(cdrs[-1])
    for cdr in finals:
        cdr.revision = 0
    assert all(cdr == finals[0] for cdr in finals)
    return finals[0]


def test_end_before_connect_gives_zero_duration_but_stays_answered(refdata):
    """SPEC: duration = ceil(end - connect); it is silent on a negative difference. Chosen
    (pipeline/core/cdr.py): 0 seconds, nothing billed, still answered (a connect was seen)."""
    cdr = final_cdr_in_every_order(refdata, outbound(start=0, connect=10, end=5))
    assert cdr.connect_time == T0 + timedelta(seconds=10)
    assert cdr.end_time == T0 + timedelta(seconds=5)
    assert cdr.duration == 0 and cdr.billing_duration == 0
    assert cdr.charged == Decimal("0.000000") and cdr.rated
    assert cdr.status == "answered"


def test_connect_before_start_duration_is_end_minus_connect(refdata):
    """Gateway clocks disagree (connect stamped before start): SPEC's duration does not
    involve the start, so it is ceil(end - connect) and the start keeps its own time."""
    cdr = final_cdr_in_every_order(refdata, outbound(start=10, connect=5, end=65.5))
    assert cdr.start_time == T0 + timedelta(seconds=10)
    assert cdr.connect_time == T0 + timedelta(seconds=5)
    assert cdr.duration == 61  # ceil(65.5 - 5), not ceil(65.5 - 10) = 56
    assert cdr.billing_duration == 120  # 60/60
    assert cdr.charged == Decimal("0.070000")  # 120 s at 0.0350/min
    assert cdr.status == "answered"


def test_everything_reversed(refdata):
    """end < connect < start: no connect-to-end time, so 0 seconds; times kept as stamped."""
    cdr = final_cdr_in_every_order(refdata, outbound(start=20, connect=10, end=0))
    assert (cdr.start_time, cdr.connect_time, cdr.end_time) == (
        T0 + timedelta(seconds=20),
        T0 + timedelta(seconds=10),
        T0,
    )
    assert cdr.duration == 0 and cdr.billing_duration == 0 and cdr.status == "answered"


def test_unanswered_end_before_start(refdata):
    cdr = final_cdr_in_every_order(refdata, outbound(start=10, connect=None, end=3, code=486))
    assert cdr.duration == 0 and cdr.billing_duration == 0
    assert cdr.status == "busy" and cdr.connect_time is None
    assert cdr.end_time < cdr.start_time


def test_sub_second_skew_rounds_up(refdata):
    cdr = final_cdr_in_every_order(refdata, outbound(start=0.3, connect=0.2, end=0.200001))
    assert cdr.duration == 1 and cdr.billing_duration == 60
