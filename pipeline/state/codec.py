"""A compact binary encoding of a `CallState`, for the disk store (`pipeline.state.rocks`).

Why not the changelog's earlier JSON (`pipeline.state.changelog.state_to_json`): reading that back
parses and validates every held message again, and a replay reads back nearly every call it
remembers once, when it forgets it. This keeps the parsed fields, so a state costs a fraction
of that each way, and keeps exactly what a later correction or dead letter
needs: every field of each held event (times as integer microseconds, the digits beyond
apart), its raw bytes (duplicates are decided on (ts, raw bytes) and orphans are
dead-lettered with them, so replay and streaming keep deciding alike) and its `Source`;
timed_out_at, revision, orphaned_at and trigger.

Layout, version 2: a fixed part packed with `struct` (little-endian), then the strings::

    fixed    B version, B flags (start, connect, end held; timed_out_at, orphaned_at,
             trigger set; settled, as `CallState.settled` said), q revision,
             q timed_out_at, q orphaned_at (µs since the epoch), i trigger partition,
             q trigger offset;
             then per held event (start, connect, end: those present) q ts (µs),
             i source partition, q source offset, B extra (the event has unknown fields)
    strings  one tuple in `marshal` format 2 (each string or bytes length-prefixed, None one
             byte): call id, trigger topic, then per held event ts_sub_us, source topic, raw
             bytes, its id if it is not the call id (else None), and its optional fields in
             `Event` order (gateway ... disconnect_initiator; the code an int), None if absent

Why marshal for the strings: C code reads them back several times faster than slicing and
decoding each in Python, and format 2 (no back-references) is a plain length-prefixed layout
that later Pythons still read. Absent numbers are zeros, which the store's compression takes
away. An event's `extra` (fields its schema does not know) is not stored: it is read back from
the raw bytes, as the parser derived it, only for events that had any.
"""

from __future__ import annotations

import marshal
import struct
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from typing import Any

import orjson

from pipeline.core.correlate import CallState, HeldEvent, make_held, make_state
from pipeline.core.events import attributes
from pipeline.core.model import Event, Source, slot_constructor

__all__ = [
    "EPOCH",
    "MICROSECOND",
    "VERSION",
    "decode_state",
    "encode_state",
    "settled_since",
    "times",
    "trigger",
]

VERSION = 2
_MARSHAL = 2  # no back-references: a plain length-prefixed layout
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # times are stored as microseconds since EPOCH
MICROSECOND = timedelta(microseconds=1)
_EPOCH, _US = EPOCH, MICROSECOND

_START, _CONNECT, _END, _TIMED_OUT, _ORPHANED, _TRIGGER, _SETTLED = 1, 2, 4, 8, 16, 32, 64
_FIXED = [struct.Struct("<BBqqqiq" + "qiqB" * n) for n in range(4)]
_HELD_COUNT = [bin(n).count("1") for n in range(8)]  # flags & 7 -> held events

# An event's optional fields, in `Event` field order.
_optional: Callable[[Event], tuple[Any, ...]] = attrgetter(
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
_HELD_STRINGS = 14  # strings of a held event: ts_sub_us, topic, raw, id, the 10 optional

_make_event: Callable[..., Event] = slot_constructor(Event)
_make_source: Callable[[str, int, int], Source] = slot_constructor(Source)


def encode_state(state: CallState) -> bytes:
    """The state's bytes; `decode_state` gives an equal state back (and equal `extra`s)."""
    call_id = state.id
    flags = 0
    numbers: list[Any] = [VERSION, 0, state.revision, 0, 0, 0, 0]
    trigger = state.trigger
    strings: list[Any] = [call_id, None if trigger is None else trigger.topic]
    if state.timed_out_at is not None:
        flags |= _TIMED_OUT
        numbers[3] = (state.timed_out_at - _EPOCH) // _US
    if state.orphaned_at is not None:
        flags |= _ORPHANED
        numbers[4] = (state.orphaned_at - _EPOCH) // _US
    if trigger is not None:
        flags |= _TRIGGER
        numbers[5] = trigger.partition
        numbers[6] = trigger.offset
    held_count = 0
    for bit, held in ((_START, state.start), (_CONNECT, state.connect), (_END, state.end)):
        if held is None:
            continue
        flags |= bit
        held_count += 1
        event, source = held.event, held.source
        numbers += ((event.ts - _EPOCH) // _US, source.partition, source.offset, bool(event.extra))
        strings += (event.ts_sub_us, source.topic, held.raw)
        strings.append(None if event.id == call_id else event.id)
        strings += _optional(event)
    if state.settled:
        flags |= _SETTLED
    numbers[1] = flags
    return _FIXED[held_count].pack(*numbers) + marshal.dumps(tuple(strings), _MARSHAL)


def decode_state(data: bytes) -> CallState:
    """The `CallState` of `encode_state`'s bytes."""
    if data[0] != VERSION:
        raise ValueError(f"call state encoding version {data[0]}, expected {VERSION}")
    flags = data[1]
    fixed = _FIXED[_HELD_COUNT[flags & 7]]
    numbers = fixed.unpack_from(data)
    strings = marshal.loads(memoryview(data)[fixed.size :])
    call_id = strings[0]
    epoch, us = _EPOCH, _US
    timed_out_at = epoch + us * numbers[3] if flags & _TIMED_OUT else None
    orphaned_at = epoch + us * numbers[4] if flags & _ORPHANED else None
    trigger = _make_source(strings[1], numbers[5], numbers[6]) if flags & _TRIGGER else None
    held: list[HeldEvent | None] = [None, None, None]
    n, i = 7, 2
    for slot, kind in enumerate(("start", "connect", "end")):
        if not flags >> slot & 1:
            continue
        # Read by index: Cython 3 crashes on unpacking a slice here (if this module is ever
        # compiled; measured, that gains nothing today).
        raw, event_id = strings[i + 2], strings[i + 3]
        event = _make_event(
            kind,
            call_id if event_id is None else event_id,
            epoch + us * numbers[n],
            strings[i],
            *strings[i + 4 : i + _HELD_STRINGS],
            _extra(kind, raw) if numbers[n + 3] else {},
        )
        held[slot] = make_held(
            event, raw, _make_source(strings[i + 1], numbers[n + 1], numbers[n + 2])
        )
        n += 4
        i += _HELD_STRINGS
    return make_state(
        call_id, held[0], held[1], held[2], timed_out_at, numbers[2], orphaned_at, trigger
    )


def _fixed(data: bytes) -> tuple[int, tuple[int, ...]]:
    if data[0] != VERSION:
        raise ValueError(f"call state encoding version {data[0]}, expected {VERSION}")
    flags = data[1]
    return flags, _FIXED[_HELD_COUNT[flags & 7]].unpack_from(data)


def _since_us(flags: int, numbers: tuple[int, ...]) -> int | None:
    if not flags & _SETTLED:
        return None
    if flags & _ORPHANED:
        return numbers[4]
    micros: int = max(numbers[7::4])  # the held events' timestamps
    if flags & _TIMED_OUT and numbers[3] > micros:
        micros = numbers[3]
    return micros


def settled_since(data: bytes) -> datetime | None:
    """For the bytes of a settled state, the time its memory window runs from, as
    `CallState.deadline` takes it (`orphaned_at`, else `last_ts()`), read from the fixed part
    only, without a decode. None for an open call's bytes."""
    micros = _since_us(*_fixed(data))
    return None if micros is None else _EPOCH + _US * micros


def trigger(data: bytes) -> tuple[str, int] | None:
    """The (topic, offset) of the message whose handling produced the state's output (its
    `trigger`), None if there is none."""
    flags, numbers = _fixed(data)
    if not flags & _TRIGGER:
        return None
    size = _FIXED[_HELD_COUNT[flags & 7]].size
    return marshal.loads(memoryview(data)[size:])[1], numbers[6]


def times(data: bytes) -> tuple[int | None, int | None, int | None, int | None]:
    """From the fixed part, in µs since the epoch: `settled_since` (None: an open call), and
    the held start's, connect's and end's timestamps (None where not held). What a store
    rebuilt from encoded states needs of each: its forget deadline, and the partition's
    event-time clock (`Correlator.set_clock`). Read for every record of a rebuild."""
    if data[0] != VERSION:
        raise ValueError(f"call state encoding version {data[0]}, expected {VERSION}")
    flags = data[1]
    held_flags = flags & 7
    numbers = _FIXED[_HELD_COUNT[held_flags]].unpack_from(data)
    held = numbers[7::4]
    if held_flags == 7:
        start, connect, end = held
    else:
        it = iter(held)
        start = next(it) if flags & _START else None
        connect = next(it) if flags & _CONNECT else None
        end = next(it) if flags & _END else None
    return _since_us(flags, numbers), start, connect, end


def _extra(kind: str, raw: bytes) -> dict[str, Any]:
    """The unknown fields of a held message, as the parser kept them (`Event.extra`): every
    key but `event`, `ts` and the attributes of its kind's schema."""
    known = attributes()[kind]
    data = orjson.loads(raw)
    return {k: v for k, v in data.items() if k not in known and k != "event" and k != "ts"}
