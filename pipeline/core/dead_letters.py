"""Dead letters: messages that cannot become part of a CDR, each with its kind and a reason an
operator can act on (SPEC section 5). The reasons of the correlator's kinds are written here;
an invalid message's reason is the validation's own (`events.InvalidEvent`), which names the
field and the rule it broke."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from pipeline.core.model import Source

__all__ = ["INVALID", "LATE", "ORPHAN", "DeadLetter", "DeadLetterKind", "late", "orphan"]

DeadLetterKind = Literal["orphan", "late", "invalid"]
INVALID: DeadLetterKind = "invalid"  # not a valid event (bytes, JSON, schema, values)
ORPHAN: DeadLetterKind = "orphan"  # a connect or end whose start never came
LATE: DeadLetterKind = "late"  # an event for a call older than the memory window


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that cannot become part of a CDR, with the reason."""

    raw: bytes
    source: Source
    reason: str
    kind: DeadLetterKind
    call_id: str | None = None  # known for orphans and late events, not for invalid bytes


def orphan(raw: bytes, source: Source, call_id: str, orphan_wait: timedelta) -> DeadLetter:
    """A held connect or end of a call whose start did not come within `orphan_wait`."""
    reason = f"orphan: no start event for call {call_id} within {orphan_wait}"
    return DeadLetter(raw, source, reason, ORPHAN, call_id)


def late(
    raw: bytes, source: Source, kind: str, call_id: str, ts: datetime, memory: timedelta
) -> DeadLetter:
    """An event of a call no longer remembered: older than the memory window allows."""
    reason = (
        f"late: {kind} for call {call_id} at {ts.isoformat()} is older"
        f" than the {memory} memory window"
    )
    return DeadLetter(raw, source, reason, LATE, call_id)
