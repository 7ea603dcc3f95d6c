"""Parsing and validation of raw gateway messages into `Event`s.

The JSON Schemas in `schemas/` are the single source of truth for what a valid
event is; they are compiled once (jsonschema-rs, which validates in Rust, faster than any
Python-generated check) and every message is checked against the schema of its `event`
kind. What a schema cannot say (a timestamp
that is well-formed but impossible) is checked here, and every rejection
carries a human-readable reason for the dead-letter topic.

Hostile input (tests/unit/test_hostile_events.py): a message over 64 KiB is refused before it
is parsed; orjson refuses invalid UTF-8, lone surrogates, NaN/Infinity, numbers beyond a double,
a BOM and nesting deeper than 1024. Of duplicate keys the last one counts (orjson), for the
schema check and the event alike. An integral float disconnect code (200.0) is the int 200.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from time import monotonic
from typing import Any

import jsonschema_rs
import orjson

from pipeline.core.model import Event, slot_constructor
from pipeline.core.numbers import caller_id, national_digits
from pipeline.resources import data_path

MAX_MESSAGE_BYTES = 64 * 1024
SCHEMA_DIR = data_path("schemas")
SCHEMA_BASE_URI = "https://schemas.cdrpipe.invalid/"
KINDS = ("start", "connect", "end")
# A gateway clock may be off, but not by more than this into the future.
MAX_FUTURE_SKEW = timedelta(days=1)
EARLIEST_TS = datetime(2000, 1, 1, tzinfo=UTC)
_ONE_SECOND = timedelta(seconds=1)


class InvalidEvent(ValueError):
    """A message that is not a valid event; `reason` goes to the dead-letter topic."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _load_schema(name: str) -> dict[str, Any]:
    return orjson.loads((SCHEMA_DIR / name).read_bytes())


def _resolve(uri: str) -> dict[str, Any]:
    """Resolve `$ref`s to our own schema files; no network is ever touched."""
    if not uri.startswith(SCHEMA_BASE_URI):
        raise InvalidEvent(f"schema reference outside the project: {uri}")
    return _load_schema(uri[len(SCHEMA_BASE_URI) :])


@functools.cache
def attributes() -> dict[str, frozenset[str]]:
    """Per kind, the `Event` attributes its schema validates (its properties but `event`, `ts`).

    Only these are taken from a message: a field that belongs to another kind (a `gateway` on a
    connect, a `disconnect_code` on a start) is not checked by this kind's schema, so it could
    hold any JSON value; it is kept in `extra` like any unknown field instead of reaching a
    typed attribute.
    """
    return {
        kind: frozenset(_load_schema(f"{kind}.schema.json")["properties"]) - {"event", "ts"}
        for kind in KINDS
    }


Validator = jsonschema_rs.Draft7Validator


@functools.cache
def validators() -> dict[str, Validator]:
    """One compiled validator per event kind, built once per process; `$ref`s resolve to our
    own schema files only (`_resolve`)."""
    return {
        kind: jsonschema_rs.Draft7Validator(_load_schema(f"{kind}.schema.json"), retriever=_resolve)
        for kind in KINDS
    }


_FUTURE: list[Any] = [float("-inf"), EARLIEST_TS]  # [monotonic expiry, wall-clock limit]


def _future_limit() -> datetime:
    """Wall clock + MAX_FUTURE_SKEW, read again at most once a second (a limit too low
    is checked against the clock itself before an event is refused)."""
    t = monotonic()
    if t >= _FUTURE[0]:
        _FUTURE[0] = t + 1.0
        _FUTURE[1] = datetime.now(UTC) + MAX_FUTURE_SKEW
    limit: datetime = _FUTURE[1]
    return limit


_DIGITS = frozenset("0123456789")


def sub_microsecond_digits(text: str) -> str:
    """The fraction digits of an RFC 3339 timestamp beyond the sixth, trailing zeros dropped
    ("" for most timestamps): what `parse_ts` cuts off, kept so durations stay exact."""
    dot = text.find(".")
    if dot < 0 or text[dot + 7 : dot + 8] not in _DIGITS:
        return ""
    frac = text[dot + 7 :]
    return frac[: len(frac) - len(frac.lstrip("0123456789"))].rstrip("0")


def _number(value: str | None) -> str | None:
    return None if value is None else national_digits(value)


#: Per kind, the attributes normalised at the edge (SPEC section 1, "Billing-grade rules"): a
#: leading "+" or "00" stripped from numbers (a URI destination is left as it is), a caller ID
#: that is not digits after that withheld (""). Applied after validation, on both paths.
NORMALISE: dict[str, dict[str, Callable[[Any], Any]]] = {
    "start": {"source": caller_id, "destination": _number, "did": _number},
}


def parse_ts(text: str) -> datetime:
    """RFC 3339 -> aware UTC datetime; raises ValueError for an impossible timestamp.

    `datetime.fromisoformat` needs help with three things RFC 3339 allows:

    * sub-microsecond digits: truncated to microseconds (an event keeps them apart, see
      `sub_microsecond_digits`, so that durations stay exact);
    * lower-case ``t`` and ``z`` (RFC 3339 section 5.6): upper-cased;
    * a leap second ``23:59:60`` (UTC; any offset): taken as the first instant of the next
      minute, as POSIX time does, so that a call stamped in a leap second is not lost. Second
      60 anywhere else is impossible.

    A value whose conversion to UTC leaves datetime's range (year 1 with a positive offset,
    year 9999 with a negative one) is a ValueError too, not an OverflowError.
    """
    text = text.upper()
    dot = text.find(".")
    if (dot < 0 or text[dot + 7 : dot + 8] not in _DIGITS) and text[17:19] != "60":
        # Fast path: at most 6 fraction digits (nothing to truncate) and no leap second.
        try:
            return datetime.fromisoformat(text).astimezone(UTC)
        except OverflowError:
            raise ValueError("out of the representable range of years 1..9999 in UTC") from None
    if dot >= 0:
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
            ts += _ONE_SECOND
    except OverflowError:
        raise ValueError("out of the representable range of years 1..9999 in UTC") from None
    return ts


def event_time(raw: bytes) -> datetime | None:
    """A message's event time alone (its `ts`), None if it has none that parses: what a worker
    forwarding the message without processing it needs (the one processing it dead-letters
    a message without)."""
    try:
        ts = orjson.loads(raw).get("ts")
        return parse_ts(ts) if isinstance(ts, str) else None
    except (orjson.JSONDecodeError, AttributeError, ValueError):
        return None


def parse_event(raw: bytes, *, now: datetime | None = None) -> Event:
    """Decode, validate and convert one message, or raise `InvalidEvent` with a reason.

    `now` bounds how far in the future a timestamp may be (gateway clock skew);
    it defaults to the wall clock.
    """
    if len(raw) > MAX_MESSAGE_BYTES:
        raise InvalidEvent(f"message too large: {len(raw)} bytes > {MAX_MESSAGE_BYTES}")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidEvent(f"not a JSON object but {type(data).__name__}")
    return event_from_dict(data, now=now)


_make_event: Callable[..., Event] = slot_constructor(Event)
#: `Event`'s attributes after kind, id, ts and ts_sub_us, before extra: those a message gives.
_ATTRIBUTES = tuple(f.name for f in fields(Event))[4:-1]
#: Looked up for another kind's attribute: not a str, so never a key of a decoded JSON object
#: (`dict.get` gives None), whatever keys a message holds.
_NOT_OWN: Any = object()


def _event_builder(kind: str) -> Callable[[dict[str, Any], datetime, str], Event]:
    """`build(data, ts, ts_sub_us)`: the `Event` of a message its kind's schema accepted: its
    own attributes (`attributes`), normalised per `NORMALISE`, None where absent; every other
    field but `event` and `ts` in `extra`. An integral float disconnect code (JSON Schema's
    integer 200.0) becomes the int."""
    own = attributes()[kind]
    keys: tuple[Any, ...] = tuple(name if name in own else _NOT_OWN for name in _ATTRIBUTES)
    known = own | {"event", "ts"}
    normalise = tuple((_ATTRIBUTES.index(name), fn) for name, fn in NORMALISE.get(kind, {}).items())
    code_at = _ATTRIBUTES.index("disconnect_code") if "disconnect_code" in own else -1

    def build(data: dict[str, Any], ts: datetime, ts_sub_us: str) -> Event:
        values = list(map(data.get, keys))
        for i, fn in normalise:
            if values[i] is not None:
                values[i] = fn(values[i])
        if code_at >= 0 and type(values[code_at]) is float:
            values[code_at] = int(values[code_at])
        if data.keys() <= known:
            extra: dict[str, Any] = {}
        else:
            extra = {k: v for k, v in data.items() if k not in known}
        return _make_event(kind, data["id"], ts, ts_sub_us, *values, extra)

    return build


@functools.cache
def _kinds() -> dict[str, tuple[Validator, Callable[[dict[str, Any], datetime, str], Event]]]:
    """Per kind: (its schema's validator, its `Event` builder)."""
    _KINDS.update((kind, (check, _event_builder(kind))) for kind, check in validators().items())
    return _KINDS


_KINDS: dict[str, tuple[Validator, Callable[[dict[str, Any], datetime, str], Event]]] = {}


def event_from_dict(data: dict[str, Any], *, now: datetime | None = None) -> Event:
    """Validate a decoded object against the schema of its kind and build the `Event`."""
    kind: Any = data.get("event")
    entry = (_KINDS or _kinds()).get(kind) if isinstance(kind, str) else None
    if entry is None:
        got = _shown(kind) if "event" in data else "no event field"
        raise InvalidEvent(f"event: must be one of {', '.join(KINDS)}, got {got}")
    check, build = entry
    try:
        valid = check.is_valid(data)
    except ValueError:  # nested deeper than the validator follows: judge what the schema reads
        valid = check.is_valid(_flattened(data, kind))
    if not valid:
        error = next(iter(check.iter_errors(_flattened(data, kind))))
        raise InvalidEvent(f"{kind}: {_field_name(error)}: {_problem(error)}")
    try:
        ts = parse_ts(data["ts"])
    except ValueError as exc:
        raise InvalidEvent(f"{kind}: ts: {exc}") from None
    if ts < EARLIEST_TS:
        raise InvalidEvent(f"{kind}: ts: {data['ts']} is before {EARLIEST_TS:%Y-%m-%d}")
    if now is not None:
        too_far = ts > now + MAX_FUTURE_SKEW
    else:  # the limit read within the last second, or if that refuses, the clock itself
        too_far = ts > _future_limit() and ts > datetime.now(UTC) + MAX_FUTURE_SKEW
    if too_far:
        raise InvalidEvent(f"{kind}: ts: {data['ts']} is more than {MAX_FUTURE_SKEW} in the future")
    return build(data, ts, sub_microsecond_digits(data["ts"]))


_JSON_TYPES = {
    type(None): "null",
    bool: "a boolean",
    int: "a number",
    float: "a number",
    list: "an array",
    dict: "an object",
}


def _shown(value: Any) -> str:
    """A JSON value for a reason: a string quoted and cut short, anything else by its type.

    Never `repr` of a container: a valid message can nest ~1000 deep, and repr() of that
    raises RecursionError (and would be long anyway).
    """
    if isinstance(value, str):
        return repr(value[:40]) + ("..." if len(value) > 40 else "")
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _flattened(data: dict[str, Any], kind: str) -> dict[str, Any]:
    """What the schema of `kind` judges of a message: its `event`, `ts` and own attributes,
    a container among them replaced by an empty one of its type.

    The verdict is the same (tests/unit/test_validation.py): the schemas constrain no other
    property (no `additionalProperties`) and no property of theirs is a container, so a
    container is refused whatever it holds. jsonschema-rs refuses to follow input nested
    deeper than its recursion limit, which a valid message may be in an unknown field."""
    known = attributes()[kind] | {"event", "ts"}
    return {
        k: type(v)() if isinstance(v, (list, dict)) else v for k, v in data.items() if k in known
    }


@functools.cache
def _descriptions() -> dict[str, str]:
    """Each pattern of the schema files -> the description beside it (what a value must be)."""
    found: dict[str, str] = {}
    for path in sorted(SCHEMA_DIR.iterdir(), key=lambda p: p.name):
        if path.name.endswith(".schema.json"):
            _collect_descriptions(_load_schema(path.name), found)
    return found


def _collect_descriptions(node: Any, found: dict[str, str]) -> None:
    # Not a closure: a recursive inner function is a reference cycle, garbage for the collector.
    if isinstance(node, dict):
        if isinstance(node.get("pattern"), str) and isinstance(node.get("description"), str):
            found[node["pattern"]] = node["description"]
        for value in node.values():
            _collect_descriptions(value, found)
    elif isinstance(node, list):
        for value in node:
            _collect_descriptions(value, found)


def _problem(error: jsonschema_rs.ValidationError) -> str:
    """The schema's complaint, readable in a dead letter and short whatever the value: the
    value is shown by `_shown`; for a pattern, what was expected (the field's schema
    description) instead of the bare regex."""
    kind, value = error.kind, error.instance
    if kind.name == "pattern":
        pattern: str = kind.pattern
        expected = _descriptions().get(pattern) or f"pattern {pattern}"
        return f"{_shown(value)} is not valid: expected {expected}"
    if kind.name == "required":
        return str(error.message)
    message = str(error.message)
    try:
        as_json = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError):
        as_json = None
    if as_json is not None and message.startswith(as_json):
        return _shown(value) + message[len(as_json) :]
    return f"{_shown(value)} is not valid ({kind.name} {kind.as_dict()})"


def _field_name(error: jsonschema_rs.ValidationError) -> str:
    """The path of the offending field (`a.b`), or "(message)" for the message itself."""
    return ".".join(str(part) for part in error.instance_path) or "(message)"
