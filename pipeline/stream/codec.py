"""Wire formats of what the workers write to Kafka: CDR records, dead letters' and forwarded
messages' headers, progress markers. (Call states on the changelog: `pipeline.state.changelog`.)

CDRs travel as JSON with money as decimal strings (never floats) and times as ISO 8601 UTC.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson

from pipeline.core.correlate import DeadLetter
from pipeline.core.model import CDR, CDR_FIELDS, MONEY_FIELDS, TIME_FIELDS, Source
from pipeline.state.codec import EPOCH, MICROSECOND

_CDR_FIELDS = CDR_FIELDS
_TIME_FIELDS = TIME_FIELDS
_MONEY_FIELDS = MONEY_FIELDS


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


def cdr_to_bytes(cdr: CDR) -> bytes:
    # orjson encodes the dataclass itself, fields in declaration order (faster than
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
