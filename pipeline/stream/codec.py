"""Wire formats of what the workers write to Kafka: CDR records, call states, dead letters.

CDRs travel as JSON with money as decimal strings (never floats) and times as
ISO 8601 UTC. Call states (the changelog of both engines) are the local stores' binary
encoding (`pipeline.state.codec`), so a store is rebuilt from the changelog by copying bytes;
states in the earlier JSON format (each event's original bytes, re-parsed) are still read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson

from pipeline.core.correlate import CallState, DeadLetter, Held
from pipeline.core.events import event_from_dict, parse_ts
from pipeline.core.model import CDR, Source
from pipeline.state.codec import EPOCH, MICROSECOND, decode_state, encode_state

_CDR_FIELDS = tuple(f.name for f in dataclasses.fields(CDR))
_TIME_FIELDS = frozenset({"start_time", "connect_time", "end_time"})
_MONEY_FIELDS = frozenset(
    {"rate", "charged", "toll_free_amount", "termination_amount", "metered_amount"}
)


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


def cdr_to_bytes(cdr: CDR) -> bytes:
    # orjson encodes the dataclass itself, fields in declaration order (12% faster than
    # building a dict first); Decimals go through `_default` as strings.
    return orjson.dumps(cdr, default=_default)


def cdr_from_bytes(raw: bytes) -> CDR:
    data = orjson.loads(raw)
    for name in _TIME_FIELDS:
        if data.get(name) is not None:
            data[name] = datetime.fromisoformat(data[name])
    for name in _MONEY_FIELDS:
        if data.get(name) is not None:
            data[name] = Decimal(data[name])
    if "flags" in data:
        data["flags"] = tuple(data["flags"])
    return CDR(**{name: data[name] for name in _CDR_FIELDS if name in data})


def _held_to_json(held: Held | None) -> list[Any] | None:
    if held is None:
        return None
    s = held.source
    return [held.raw.decode(), s.topic, s.partition, s.offset]


def _held_from_json(data: list[Any] | None) -> Held | None:
    if data is None:
        return None
    raw = data[0].encode()
    # Accepted once, so valid now: its timestamp can only have fallen further into the past.
    return Held(event_from_dict(orjson.loads(raw)), raw, Source(data[1], data[2], data[3]))


def state_to_changelog(state: CallState) -> bytes:
    """A call state as the changelog carries it."""
    return encode_state(state)


def state_from_changelog(raw: bytes) -> CallState:
    """A changelog record's state, in either format (the JSON one starts with `[`)."""
    return state_from_bytes(raw) if raw[:1] == b"[" else decode_state(raw)


def state_to_bytes(state: CallState) -> bytes:
    """The changelog's earlier JSON format (still read: `state_from_changelog`)."""
    return orjson.dumps(
        [
            state.id,
            _held_to_json(state.start),
            _held_to_json(state.connect),
            _held_to_json(state.end),
            state.timed_out_at.isoformat() if state.timed_out_at else None,
            state.revision,
            state.orphaned_at.isoformat() if state.orphaned_at else None,
            _source_to_json(state.trigger),
        ]
    )


def _source_to_json(source: Source | None) -> list[Any] | None:
    return None if source is None else [source.topic, source.partition, source.offset]


def state_from_bytes(raw: bytes) -> CallState:
    # States written before orphan tombstones and triggers existed have six fields.
    call_id, start, connect, end, timed_out_at, revision, *rest = orjson.loads(raw)
    orphaned_at, trigger = (rest + [None, None])[:2]
    return CallState(
        id=call_id,
        start=_held_from_json(start),
        connect=_held_from_json(connect),
        end=_held_from_json(end),
        timed_out_at=parse_ts(timed_out_at) if timed_out_at else None,
        revision=revision,
        orphaned_at=parse_ts(orphaned_at) if orphaned_at else None,
        trigger=Source(*trigger) if trigger else None,
    )


DLQ_HEADERS = ("dlq.reason", "dlq.kind", "dlq.topic", "dlq.partition", "dlq.offset")


def dead_letter_headers(dead: DeadLetter) -> list[tuple[str, bytes]]:
    """Kafka headers of a dead letter; its value stays the original bytes."""
    s = dead.source
    values = (dead.reason, dead.kind, s.topic, str(s.partition), str(s.offset))
    return [(k, v.encode()) for k, v in zip(DLQ_HEADERS, values, strict=True)]


# A message forwarded to its call's canonical partition (`pipeline.core.partitioning`) keeps
# where it was read, for the dead letters it may become.
REPARTITION_HEADERS = ("source.topic", "source.partition", "source.offset")


def repartition_headers(source: Source) -> list[tuple[str, bytes]]:
    values = (source.topic, str(source.partition), str(source.offset))
    return [(k, v.encode()) for k, v in zip(REPARTITION_HEADERS, values, strict=True)]


PROGRESS_HEADER = "cdrpipe.progress"
PROGRESS_HEADERS = [(PROGRESS_HEADER, b"1")]


def progress_to_bytes(progress: Mapping[int, datetime | None]) -> bytes:
    """A progress marker of the repartition topic: input partition -> how far in event time
    its messages are forwarded (µs since the epoch), or None for an idle one."""
    return orjson.dumps(
        {str(p): None if t is None else (t - EPOCH) // MICROSECOND for p, t in progress.items()}
    )


def progress_from_bytes(value: bytes) -> dict[int, datetime | None]:
    return {
        int(p): None if us is None else EPOCH + MICROSECOND * us
        for p, us in orjson.loads(value).items()
    }


def _header_pairs(headers: Any) -> Any:
    """(key, value) pairs of a message's headers, a list of pairs or a mapping as the client
    gives them."""
    return headers.items() if hasattr(headers, "items") else headers or ()


def is_progress(headers: Any) -> bool:
    """A progress marker, not a forwarded message (`progress_to_bytes`)."""
    return any(k == PROGRESS_HEADER for k, _ in _header_pairs(headers))


def forwarded_from(headers: Any) -> Source | None:
    """Where a forwarded message was first read, from its headers (a list of pairs or a
    mapping, as the client gives them); None if they do not say."""
    found = {k: v for k, v in _header_pairs(headers) if k in REPARTITION_HEADERS}
    try:
        topic, partition, offset = (found[k].decode() for k in REPARTITION_HEADERS)
        return Source(topic, int(partition), int(offset))
    except (KeyError, ValueError, UnicodeDecodeError):
        return None


def as_forwarded(dead: list[DeadLetter], here: Source, origin: Source | None) -> list[DeadLetter]:
    """The dead letters of a forwarded message point at where it was first read."""
    if origin is None:
        return dead
    return [dataclasses.replace(d, source=origin) if d.source == here else d for d in dead]
