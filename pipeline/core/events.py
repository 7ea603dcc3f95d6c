"""Parsing and validation of raw gateway messages into `Event`s.

The JSON Schemas in `schemas/` are the single source of truth for what a valid
event is; they are compiled once (fastjsonschema) and every message is checked
against the schema of its `event` kind. What a schema cannot say (a timestamp
that is well-formed but impossible) is checked here, and every rejection
carries a human-readable reason for the dead-letter topic.
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

_KNOWN = frozenset(
    (
        "event",
        "id",
        "ts",
        "gateway",
        "direction",
        "account",
        "source",
        "destination",
        "did",
        "trunk",
        "disconnect_code",
        "disconnect_reason",
        "disconnect_initiator",
    )
)


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
def validators() -> dict[str, Callable[[Any], Any]]:
    """One compiled validator per event kind, built once per process."""
    handlers = {"https": _resolve}
    return {
        kind: fastjsonschema.compile(_load_schema(f"{kind}.schema.json"), handlers=handlers)
        for kind in KINDS
    }


def parse_ts(text: str) -> datetime:
    """RFC 3339 -> aware UTC datetime (sub-microsecond digits are truncated)."""
    if "." in text:
        head, _, frac = text.partition(".")
        digits = len(frac) - len(frac.lstrip("0123456789"))
        if digits > 6:
            text = f"{head}.{frac[:6]}{frac[digits:]}"
    return datetime.fromisoformat(text).astimezone(UTC)


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
        raise InvalidEvent(f"event: must be one of {', '.join(KINDS)}, got {kind!r:.40}")
    try:
        validate(data)
    except fastjsonschema.JsonSchemaValueException as exc:
        raise InvalidEvent(f"{kind}: {_field_name(exc)}: {exc.message}") from None
    try:
        ts = parse_ts(data["ts"])
    except ValueError as exc:
        raise InvalidEvent(f"{kind}: ts: {exc}") from None
    if ts < EARLIEST_TS:
        raise InvalidEvent(f"{kind}: ts: {data['ts']} is before {EARLIEST_TS:%Y-%m-%d}")
    limit = (now or datetime.now(UTC)) + MAX_FUTURE_SKEW
    if ts > limit:
        raise InvalidEvent(f"{kind}: ts: {data['ts']} is more than {MAX_FUTURE_SKEW} in the future")
    extra = {k: v for k, v in data.items() if k not in _KNOWN} if len(data) > 3 else {}
    get = data.get
    return Event(
        kind=kind,  # type: ignore[arg-type]
        id=data["id"],
        ts=ts,
        gateway=get("gateway"),
        direction=get("direction"),
        account=get("account"),
        source=get("source"),
        destination=get("destination"),
        did=get("did"),
        trunk=get("trunk"),
        disconnect_code=get("disconnect_code"),
        disconnect_reason=get("disconnect_reason"),
        disconnect_initiator=get("disconnect_initiator"),
        extra=extra,
    )


def _field_name(exc: fastjsonschema.JsonSchemaValueException) -> str:
    name = exc.name or "data"
    return name.removeprefix("data.").removeprefix("data") or "(message)"
