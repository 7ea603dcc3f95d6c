"""Value types shared by every layer: a validated event and a finished CDR.

They are plain frozen dataclasses so that the pure core, the Faust agents, the
ClickHouse store and the exports agree on one shape without importing each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

EventKind = Literal["start", "connect", "end"]
Direction = Literal["inbound", "outbound"]
Status = Literal["answered", "busy", "no-answer", "cancelled", "failed"]
CdrType = Literal["International", "Local", "Origin based"]
Initiator = Literal["origination", "destination"]
Flag = Literal["account_mismatch", "unknown_trunk", "unknown_did", "no_rate"]

#: Why a CDR needs a second look (SPEC section 1 and 3, "Billing-grade rules"):
#: ``account_mismatch``: the event named another account than the owner of its trunk or DID
#: (the CDR is the owner's); ``unknown_trunk`` / ``unknown_did``: not in the reference data
#: (unrated, the event's account); ``no_rate``: no rate row matched (unrated). A CDR's flags
#: are a sorted tuple of these; ``rated`` and ``timed_out`` stay columns of their own.
FLAGS: tuple[Flag, ...] = ("account_mismatch", "no_rate", "unknown_did", "unknown_trunk")


@dataclass(frozen=True, slots=True)
class Source:
    """Where a message came from, so a dead letter can point back at it."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class Event:
    """One validated gateway event (SPEC section 1). Times are aware UTC datetimes."""

    kind: EventKind
    id: str
    ts: datetime
    # The timestamp's fraction digits beyond the microsecond, trailing zeros dropped ("7891"
    # for .1234567891): datetime stops at microseconds, durations use every digit.
    ts_sub_us: str = ""
    # start
    gateway: str | None = None
    direction: Direction | None = None
    account: str | None = None
    source: str | None = None
    destination: str | None = None
    did: str | None = None
    trunk: str | None = None
    # end
    disconnect_code: int | None = None
    disconnect_reason: str | None = None
    disconnect_initiator: Initiator | None = None
    # Unknown extra fields (and fields of another kind), kept as parsed. Left out of repr():
    # a valid message may nest them ~1000 deep, which repr() cannot print (RecursionError).
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(slots=True)
class CDR:
    """A finished call detail record: every column of both seed layouts plus bookkeeping.

    Not frozen: building one is on the hot path and frozen dataclasses set each
    field through object.__setattr__ (twice as slow); treat it as a value anyway.

    Fields that only one direction has are None for the other. Money is Decimal,
    None where the call is unrated or the service does not apply.
    """

    id: str
    direction: Direction
    account: str
    gateway: str
    start_time: datetime
    connect_time: datetime | None
    end_time: datetime
    source: str
    destination: str
    duration: int
    disconnect_code: int | None  # None only for calls closed as timed out
    disconnect_reason: str
    disconnect_initiator: Initiator | None
    status: Status
    cdr_type: CdrType
    country_name: str
    network_name: str
    trunk: str
    # outbound
    cli: str | None = None
    billing_duration: int | None = None
    rate: Decimal | None = None
    charged: Decimal | None = None
    # inbound
    did: str | None = None
    toll_free_amount: Decimal | None = None
    termination_amount: Decimal | None = None
    metered_amount: Decimal | None = None
    # bookkeeping
    rated: bool = True
    timed_out: bool = False
    flags: tuple[str, ...] = ()
    revision: int = 1


#: The CDR's fields in order, and of those the money (Decimal) and time (UTC datetime) ones, read
#: from its annotations: every encoding of a CDR takes its field lists from here.
CDR_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(CDR))
MONEY_FIELDS: tuple[str, ...] = tuple(
    f.name for f in fields(CDR) if str(f.type).startswith("Decimal")
)
TIME_FIELDS: tuple[str, ...] = tuple(
    f.name for f in fields(CDR) if str(f.type).startswith("datetime")
)


def slot_constructor(cls: type[Any]) -> Callable[..., Any]:
    """A function building `cls` (a slots dataclass without ``__post_init__``) from all its
    field values in field order, equal to ``cls(*values)``, by filling the slots directly.

    For the hot path: a frozen dataclass's ``__init__`` sets each field through
    ``object.__setattr__``, about twice as slow; nothing else happens in it.
    """
    names = [f.name for f in fields(cls)]
    if hasattr(cls, "__post_init__") or any(f.init is False for f in fields(cls)):
        raise TypeError(f"{cls.__name__}: cannot be built slot by slot")
    namespace: dict[str, Any] = {"new": object.__new__, "cls": cls}
    lines = [f"def make({', '.join(names)}):", "    self = new(cls)"]
    for i, name in enumerate(names):
        namespace[f"set{i}"] = cls.__dict__[name].__set__  # the slot's member descriptor
        lines.append(f"    set{i}(self, {name})")
    lines.append("    return self")
    exec("\n".join(lines), namespace)  # noqa: S102 - our own generated source
    make: Callable[..., Any] = namespace["make"]
    make.__qualname__ = make.__name__ = f"make_{cls.__name__}"
    return make
