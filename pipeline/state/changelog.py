"""Call states as the changelog topic carries them (both engines): the local stores' binary
encoding (`pipeline.state.codec`), so that a store is rebuilt from the changelog by copying
bytes. Records of the changelog's earlier JSON format (each held event's original bytes,
parsed again) are still read."""

from __future__ import annotations

from typing import Any

import orjson

from pipeline.core.correlate import CallState, HeldEvent
from pipeline.core.events import event_from_dict, parse_ts
from pipeline.core.model import Source
from pipeline.state.codec import decode_state, encode_state

__all__ = [
    "as_encoded",
    "state_from_changelog",
    "state_from_json",
    "state_to_changelog",
    "state_to_json",
]


def _held_to_json(held: HeldEvent | None) -> list[Any] | None:
    if held is None:
        return None
    s = held.source
    return [held.raw.decode(), s.topic, s.partition, s.offset]


def _held_from_json(data: list[Any] | None) -> HeldEvent | None:
    if data is None:
        return None
    raw = data[0].encode()
    # Accepted once, so valid now: its timestamp can only have fallen further into the past.
    return HeldEvent(event_from_dict(orjson.loads(raw)), raw, Source(data[1], data[2], data[3]))


def state_to_changelog(state: CallState) -> bytes:
    """A call state as the changelog carries it."""
    return encode_state(state)


def state_from_changelog(raw: bytes) -> CallState:
    """A changelog record's state, in either format (the JSON one starts with `[`)."""
    return state_from_json(raw) if raw[:1] == b"[" else decode_state(raw)


def state_to_json(state: CallState) -> bytes:
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


def state_from_json(raw: bytes) -> CallState:
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


def as_encoded(value: bytes) -> bytes:
    """A changelog record's state as `codec.encode_state` bytes (records of the earlier JSON
    format are converted)."""
    if value[0] == 0x5B:  # "["
        return encode_state(state_from_json(value))
    return value
