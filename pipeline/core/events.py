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
import re
from collections.abc import Callable
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from time import monotonic
from typing import Any

import fastjsonschema
import orjson

from pipeline.core.model import Event
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


@functools.cache
def validators() -> dict[str, Callable[[Any], Any]]:
    """One compiled validator per event kind, built once per process."""
    handlers = {"https": _resolve}
    return {
        kind: fastjsonschema.compile(_load_schema(f"{kind}.schema.json"), handlers=handlers)
        for kind in KINDS
    }


class _Unsupported(Exception):
    """A schema construct the fast-path generator does not understand."""


#: Keywords that say nothing about validity.
_ANNOTATIONS = frozenset(
    {"$schema", "$id", "$comment", "title", "description", "examples", "default"}
)


class _FastCheck:
    """Generates, from one kind's JSON Schema, Python source for a function ``accept(data)``
    that returns True only for objects the schema certainly accepts (False means "ask
    fastjsonschema", not "invalid").

    It understands exactly: ``type`` object / string / integer (checked as the exact Python
    types orjson produces: ``str``, ``int`` but not ``bool``), ``required``, ``properties``,
    ``enum`` of strings, ``minLength``, ``maxLength``, ``pattern`` (with fastjsonschema's own
    compiled regex, so the very same matching rules), ``minimum``, ``maximum``, ``$ref`` into
    `schemas/`, and ``allOf`` of plain subschemas or of ``if``/``then`` whose ``if`` only
    tests properties against string enums (evaluated exactly, as the schema defines it).
    Anything else raises `_Unsupported`, and that kind then has no fast path.
    """

    def __init__(self, patterns: dict[str, re.Pattern[str]]) -> None:
        self.patterns = patterns
        self.consts: dict[str, Any] = {}
        self.lines: list[str] = []
        self.source = ""

    def const(self, value: Any) -> str:
        name = f"_c{len(self.consts)}"
        self.consts[name] = value
        return name

    def emit(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)

    def deref(self, node: Any) -> dict[str, Any]:
        if not isinstance(node, dict):
            raise _Unsupported(f"schema node {node!r}")
        if "$ref" not in node:
            return node
        if set(node) - _ANNOTATIONS - {"$ref"}:
            raise _Unsupported("$ref with sibling keywords")
        ref = node["$ref"]
        if not isinstance(ref, str) or "#" not in ref or ref.startswith("#"):
            raise _Unsupported(f"$ref {ref!r}")
        file, _, pointer = ref.removeprefix(SCHEMA_BASE_URI).partition("#")
        if "/" in file or ":" in file or "~" in pointer or "%" in pointer:
            raise _Unsupported(f"$ref {ref!r}")
        try:
            target: Any = _load_schema(file)
        except OSError:
            raise _Unsupported(f"$ref {ref!r}") from None
        for part in pointer.strip("/").split("/"):
            if not isinstance(target, dict) or part not in target:
                raise _Unsupported(f"$ref {ref!r}")
            target = target[part]
        return self.deref(target)

    def build(self, name: str) -> Callable[[dict[str, Any]], bool]:
        schema = _load_schema(name)
        if schema.get("$id", SCHEMA_BASE_URI + name) != SCHEMA_BASE_URI + name:
            raise _Unsupported("$id other than the file's own: $refs would resolve elsewhere")
        self.lines = [
            "def accept(data):",
            "    if type(data) is not dict: return False",
            "    keys = data.keys()",
        ]
        self.object(schema, 1, required=frozenset())
        self.emit(1, "return True")
        namespace: dict[str, Any] = dict(self.consts)
        self.source = "\n".join(self.lines)
        exec(self.source, namespace)  # noqa: S102 - our own generated source
        accept: Callable[[dict[str, Any]], bool] = namespace["accept"]
        return accept

    def object(self, schema: Any, indent: int, required: frozenset[str]) -> None:
        """Checks of an object-level (sub)schema; `required` keys are known to be present."""
        schema = self.deref(schema)
        unknown = set(schema) - _ANNOTATIONS - {"type", "required", "properties", "allOf"}
        if unknown:
            raise _Unsupported(f"keywords {sorted(unknown)}")
        if "type" in schema:
            if schema["type"] != "object":
                raise _Unsupported(f"object type {schema['type']!r}")
            pass  # checked first of all in `build`
        if "required" in schema:
            names = schema["required"]
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise _Unsupported("required")
            self.emit(indent, f"if not keys >= {self.const(frozenset(names))}: return False")
            required = required | frozenset(names)
        properties = schema.get("properties", {})
        if not isinstance(properties, dict):
            raise _Unsupported("properties")
        for name, sub in properties.items():
            key = repr(name)
            if name in required:
                self.emit(indent, f"v = data[{key}]")
                self.value(sub, indent)
            else:
                self.emit(indent, f"if {key} in keys:")
                self.emit(indent + 1, f"v = data[{key}]")
                self.value(sub, indent + 1)
        for item in schema.get("allOf", []):
            item = self.deref(item)
            if "if" not in item:
                self.object(item, indent, required)
                continue
            if set(item) - _ANNOTATIONS - {"if", "then"}:
                raise _Unsupported("if without then, or with else")
            self.emit(indent, f"if {self.condition(item['if'])}:")
            self.emit(indent + 1, "pass")
            self.object(item.get("then", {}), indent + 1, required)

    def condition(self, schema: Any) -> str:
        """An exact Python expression for "`data` is valid against this `if` schema"."""
        schema = self.deref(schema)
        if set(schema) - _ANNOTATIONS - {"properties"}:
            raise _Unsupported("if beyond properties")
        terms = []
        for name, sub in schema.get("properties", {}).items():
            sub = self.deref(sub)
            if set(sub) - _ANNOTATIONS != {"enum"}:
                raise _Unsupported("if property beyond enum")
            enum = self.string_enum(sub["enum"])
            key = repr(name)
            terms.append(
                f"({key} not in keys or (type(data[{key}]) is str and data[{key}] in {enum}))"
            )
        return " and ".join(terms) or "True"

    def string_enum(self, values: Any) -> str:
        if not isinstance(values, list) or not all(type(v) is str for v in values):
            raise _Unsupported("enum of non-strings")
        return self.const(frozenset(values))

    def value(self, schema: Any, indent: int) -> None:
        """Checks of one property's value `v` (conservative: False when unsure)."""
        schema = self.deref(schema)
        known = {"type", "enum", "minLength", "maxLength", "pattern", "minimum", "maximum"}
        unknown = set(schema) - _ANNOTATIONS - known
        if unknown:
            raise _Unsupported(f"keywords {sorted(unknown)}")
        kind = schema.get("type")
        string_rules = {"minLength", "maxLength", "pattern"} & set(schema)
        number_rules = {"minimum", "maximum"} & set(schema)
        if "enum" in schema:
            self.emit(
                indent, f"if type(v) is not str or v not in {self.string_enum(schema['enum'])}:"
            )
            self.emit(indent + 1, "return False")
        if kind == "integer" or (kind is None and number_rules and not string_rules):
            if string_rules:
                raise _Unsupported("string rules on an integer")
            self.emit(indent, "if type(v) is not int: return False")
            for rule, op in (("minimum", "<"), ("maximum", ">")):
                if rule in schema:
                    bound = schema[rule]
                    if type(bound) not in (int, float):
                        raise _Unsupported(rule)
                    self.emit(indent, f"if v {op} {bound!r}: return False")
        elif kind == "string" or (kind is None and string_rules):
            if number_rules:
                raise _Unsupported("number rules on a string")
            self.emit(indent, "if type(v) is not str: return False")
            if "minLength" in schema or "maxLength" in schema:
                self.emit(indent, "n = len(v)")
            for rule, op in (("minLength", "<"), ("maxLength", ">")):
                if rule in schema:
                    bound = schema[rule]
                    if type(bound) is not int:
                        raise _Unsupported(rule)
                    self.emit(indent, f"if n {op} {bound}: return False")
            if "pattern" in schema:
                compiled = self.patterns.get(schema["pattern"])
                if compiled is None:
                    raise _Unsupported(f"pattern {schema['pattern']!r} unknown to fastjsonschema")
                self.emit(indent, f"if not {self.const(compiled)}.search(v): return False")
        elif kind is not None:
            raise _Unsupported(f"type {kind!r}")


@functools.cache
def fast_validators() -> dict[str, Callable[[dict[str, Any]], bool]]:
    """Per kind whose schema the generator understands, `accept(data)`: True only if
    `validators()[kind]` accepts `data` too; False sends the message through
    fastjsonschema, which then gives the reason (tests/unit/test_fast_validation.py
    compares the two on mutated events)."""
    out = {}
    for kind, validate in validators().items():
        patterns = getattr(validate, "__globals__", {}).get("REGEX_PATTERNS", {})
        try:
            out[kind] = _FastCheck(patterns).build(f"{kind}.schema.json")
        except _Unsupported:
            continue
    return out


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


def _event_builder(kind: str) -> Callable[[dict[str, Any], datetime, str], Event]:
    """`build(data, ts, ts_sub_us)`: the `Event` of a message `fast_validators()` accepted,
    equal to what the generic path of `event_from_dict` builds (its own attributes, normalised
    per `NORMALISE`, None where absent; everything else but `event` and `ts` in `extra`). It
    fills the slots directly: the frozen dataclass's ``__init__`` goes through
    ``object.__setattr__`` per field, twice as slow, and does nothing else (no defaults to
    compute, no ``__post_init__``)."""
    own = attributes()[kind]
    names = [f.name for f in fields(Event)]
    if not own <= set(names) or hasattr(Event, "__post_init__"):
        raise _Unsupported(f"{kind}: Event cannot be built field by field")
    known = frozenset(own | {"event", "ts"})
    required = set(_load_schema(f"{kind}.schema.json").get("required", ()))
    normalise = NORMALISE.get(kind, {})
    namespace: dict[str, Any] = {"new": object.__new__, "Event": Event, "known": known}
    lines = [
        "def build(data, ts, ts_sub_us):",
        "    if data.keys() <= known:",
        "        extra = {}",
        "    else:",
        "        extra = {k: v for k, v in data.items() if k not in known}",
        "    e = new(Event)",
    ]
    for i, name in enumerate(names):
        namespace[f"set{i}"] = Event.__dict__[name].__set__  # the slot's descriptor
        if name == "kind":
            value = repr(kind)
        elif name in ("ts", "ts_sub_us", "extra"):
            value = name
        elif name in required:  # present in every message the schema accepts
            value = f"data[{name!r}]"
        elif name in own:
            value = f"data.get({name!r})"
        else:
            value = "None"
        if name in normalise:
            namespace[f"norm{i}"] = normalise[name]
            value = f"norm{i}({value})"
        lines.append(f"    set{i}(e, {value})")
    lines.append("    return e")
    exec("\n".join(lines), namespace)  # noqa: S102 - our own generated source
    build: Callable[[dict[str, Any], datetime, str], Event] = namespace["build"]
    return build


_Kind = tuple[
    Callable[[Any], Any],
    Callable[[dict[str, Any]], bool] | None,
    Callable[[dict[str, Any], datetime, str], Event] | None,
]


@functools.cache
def _kinds() -> dict[str, _Kind]:
    """Per kind: (fastjsonschema validator, fast acceptor or None, fast builder or None)."""
    fast = fast_validators()
    out: dict[str, _Kind] = {}
    for kind, validate in validators().items():
        accept = fast.get(kind)
        try:
            build = _event_builder(kind) if accept is not None else None
        except _Unsupported:
            accept = build = None
        out[kind] = (validate, accept, build)
    _KINDS.update(out)
    return _KINDS


_KINDS: dict[str, _Kind] = {}  # _kinds(), once it was called: without the call per event


def event_from_dict(data: dict[str, Any], *, now: datetime | None = None) -> Event:
    """Validate a decoded object against the schema of its kind and build the `Event`.

    The common shape is accepted by the fast check generated from the schema
    (`fast_validators`); anything it does not accept goes through fastjsonschema, which gives
    the reason for a refusal."""
    kind: Any = data.get("event")
    entry = (_KINDS or _kinds()).get(kind) if isinstance(kind, str) else None
    if entry is None:
        got = _shown(kind) if "event" in data else "no event field"
        raise InvalidEvent(f"event: must be one of {', '.join(KINDS)}, got {got}")
    validate, accept, build = entry
    fast = accept is not None and accept(data)
    if not fast:
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
    if now is not None:
        too_far = ts > now + MAX_FUTURE_SKEW
    else:  # the limit read within the last second, or if that refuses, the clock itself
        too_far = ts > _future_limit() and ts > datetime.now(UTC) + MAX_FUTURE_SKEW
    if too_far:
        raise InvalidEvent(f"{kind}: ts: {data['ts']} is more than {MAX_FUTURE_SKEW} in the future")
    sub_us = sub_microsecond_digits(data["ts"])
    if fast:
        assert build is not None
        return build(data, ts, sub_us)
    own = attributes()[kind]
    attrs = {k: data[k] for k in own if k in data}
    for name, normalise in NORMALISE.get(kind, {}).items():
        if name in attrs:
            attrs[name] = normalise(attrs[name])
    extra = (
        {k: v for k, v in data.items() if k not in own and k != "event" and k != "ts"}
        if len(data) > len(attrs) + 2
        else {}
    )
    code = attrs.get("disconnect_code")
    if type(code) is float:
        # JSON Schema counts 200.0 (or 2e2) as the integer 200; make it one.
        attrs["disconnect_code"] = int(code)
    return Event(kind=kind, ts=ts, ts_sub_us=sub_us, extra=extra, **attrs)  # type: ignore[arg-type]


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
