"""Parsing and validation of raw gateway messages into `Event`s.

The JSON Schemas in `schemas/` are the single source of truth for what a valid
event is; they are compiled once (fastjsonschema) and every message is checked
against the schema of its `event` kind. What a schema cannot say (a timestamp
that is well-formed but impossible) is checked here, and every rejection
carries a human-readable reason for the dead-letter topic.

Hostile input (tests/unit/test_hostile_events.py): a message over 64 KiB is refused before it
is parsed; orjson refuses invalid UTF-8, lone surrogates, NaN/Infinity, numbers beyond a double,
a BOM and nesting deeper than 1024. Of duplicate keys the last one counts (orjson), for the
schema check and the event alike. An integral float disconnect code (200.0) is the int 200.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import fastjsonschema
import orjson

from pipeline.core.model import Event

MAX_MESSAGE_BYTES = 64 * 1024
SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"
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


@functools.cache
def validators() -> dict[str, Callable[[Any], Any]]:
    """One compiled validator per event kind, built once per process."""
    handlers = {"https": _resolve}
    return {
        kind: fastjsonschema.compile(_load_schema(f"{kind}.schema.json"), handlers=handlers)
        for kind in KINDS
    }


def parse_ts(text: str) -> datetime:
    """RFC 3339 -> aware UTC datetime; raises ValueError for an impossible timestamp.

    `datetime.fromisoformat` needs help with three things RFC 3339 allows:

    * sub-microsecond digits: truncated to microseconds;
    * lower-case ``t`` and ``z`` (RFC 3339 section 5.6): upper-cased;
    * a leap second ``23:59:60`` (UTC; any offset): taken as the first instant of the next
      minute, as POSIX time does, so that a call stamped in a leap second is not lost. Second
      60 anywhere else is impossible.

    A value whose conversion to UTC leaves datetime's range (year 1 with a positive offset,
    year 9999 with a negative one) is a ValueError too, not an OverflowError.
    """
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
            ts += _ONE_SECOND
    except OverflowError:
        raise ValueError("out of the representable range of years 1..9999 in UTC") from None
    return ts


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


def event_from_dict(data: dict[str, Any], *, now: datetime | None = None) -> Event:
    """Validate a decoded object against the schema of its kind and build the `Event`."""
    kind = data.get("event")
    validate = validators().get(kind) if isinstance(kind, str) else None
    if validate is None:
        got = _shown(kind) if "event" in data else "no event field"
        raise InvalidEvent(f"event: must be one of {', '.join(KINDS)}, got {got}")
    try:
        validate(data)
    except fastjsonschema.JsonSchemaValueException as exc:
        raise InvalidEvent(f"{kind}: {_field_name(exc)}: {_problem(exc)}") from None
    try:
        ts = parse_ts(data["ts"])
    except ValueError as exc:
        raise InvalidEvent(f"{kind}: ts: {exc}") from None
    if ts < EARLIEST_TS:
        raise InvalidEvent(f"{kind}: ts: {data['ts']} is before {EARLIEST_TS:%Y-%m-%d}")
    limit = (now or datetime.now(UTC)) + MAX_FUTURE_SKEW
    if ts > limit:
        raise InvalidEvent(f"{kind}: ts: {data['ts']} is more than {MAX_FUTURE_SKEW} in the future")
    own = attributes()[kind]
    attrs = {k: data[k] for k in own if k in data}
    extra = (
        {k: v for k, v in data.items() if k not in own and k != "event" and k != "ts"}
        if len(data) > len(attrs) + 2
        else {}
    )
    code = attrs.get("disconnect_code")
    if type(code) is float:
        # JSON Schema counts 200.0 (or 2e2) as the integer 200; make it one.
        attrs["disconnect_code"] = int(code)
    return Event(kind=kind, ts=ts, extra=extra, **attrs)  # type: ignore[arg-type]


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


def _problem(exc: fastjsonschema.JsonSchemaValueException) -> str:
    """The schema's complaint, readable in a dead letter: for a pattern, the offending value
    and what was expected (the field's schema description) instead of the bare regex."""
    if exc.rule != "pattern":
        return exc.message
    definition = exc.definition if isinstance(exc.definition, dict) else {}
    expected = definition.get("description") or f"pattern {exc.rule_definition}"
    return f"{_shown(exc.value)} is not valid: expected {expected}"


def _field_name(exc: fastjsonschema.JsonSchemaValueException) -> str:
    name = exc.name or "data"
    return name.removeprefix("data.").removeprefix("data") or "(message)"
