"""How a parallel replay's CDRs travel from a worker process to the parent, each round's in
one payload: rows of plain values in marshal (`encode_cdrs`, the usual way), pickled `CDR`s
for the few that marshal cannot carry, and rows already encoded for the store's insert
(`encode_rows`) when the parent writes them straight through."""

from __future__ import annotations

import marshal
import pickle
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from operator import attrgetter
from typing import Any, NamedTuple

from pipeline.core.model import CDR, CDR_FIELDS, MONEY_FIELDS, TIME_FIELDS
from pipeline.store.writer import encode_row

__all__ = [
    "DIRECTIONS",
    "MARSHAL",
    "MARSHAL_VERSION",
    "PICKLE",
    "ROWS",
    "RowEntry",
    "decode_cdrs",
    "decode_rows",
    "encode_cdrs",
    "encode_rows",
]

_FIELDS = CDR_FIELDS
_ALL_FIELDS = attrgetter(*_FIELDS)
_TIME_AT = tuple(i for i, n in enumerate(_FIELDS) if n in TIME_FIELDS)
_MONEY_AT = tuple(i for i, n in enumerate(_FIELDS) if n in MONEY_FIELDS)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
#: Version 2 writes no back-references: twice as fast to dump as the default (4), a third
#: bigger, as fast to load.
MARSHAL_VERSION = 2


def _row(cdr: CDR) -> list[Any] | None:
    """The CDR's field values with times as microsecond ticks and money as decimal strings, or
    None if a time is not an aware UTC datetime or money not a Decimal (then it is pickled)."""
    row = list(_ALL_FIELDS(cdr))
    for i in _TIME_AT:
        t = row[i]
        if t is not None:
            if type(t) is not datetime or t.tzinfo is not UTC or t.fold:
                return None
            row[i] = (t - _EPOCH) // _MICROSECOND
    for i in _MONEY_AT:
        m = row[i]
        if m is not None:
            if type(m) is not Decimal:
                return None
            row[i] = str(m)  # exact: Decimal(str(m)) has m's sign, digits and exponent
    return row


MARSHAL, PICKLE, ROWS = "marshal", "pickle", "rows"  # how a round's CDRs travel


def encode_cdrs(cdrs: list[CDR]) -> tuple[str, bytes]:
    """(MARSHAL or PICKLE, bytes) for `decode_cdrs`. Rows of plain values in marshal are the
    cheapest way there and back: pickled `CDR`s (datetimes, Decimals) cost about twice as
    much, the stream codec's JSON half as much again (docs/BENCHMARKS.md). marshal refuses
    (rather than converts) anything that is not exactly a str, int, bool or None; such CDRs
    travel pickled."""
    rows = []
    for cdr in cdrs:
        row = _row(cdr)
        if row is None:
            return PICKLE, pickle.dumps(cdrs, pickle.HIGHEST_PROTOCOL)
        rows.append(row)
    try:
        return MARSHAL, marshal.dumps(rows, MARSHAL_VERSION)
    except ValueError:
        return PICKLE, pickle.dumps(cdrs, pickle.HIGHEST_PROTOCOL)


def decode_cdrs(encoding: str, payload: bytes) -> list[CDR]:
    if encoding == PICKLE:
        return pickle.loads(payload)
    epoch, ticks = _EPOCH, timedelta
    out = []
    for row in marshal.loads(payload):
        for i in _TIME_AT:
            t = row[i]
            if t is not None:
                row[i] = epoch + ticks(microseconds=t)
        for i in _MONEY_AT:
            m = row[i]
            if m is not None:
                row[i] = Decimal(m)
        out.append(CDR(*row))
    return out


class RowEntry(NamedTuple):
    """A CDR as a parallel replay's parent keeps it for a `RowSink`: its table row and what
    the summary needs."""

    id: str
    direction: str
    rated: bool
    timed_out: bool
    account_mismatch: bool
    row: bytes


def encode_rows(cdrs: list[CDR]) -> bytes:
    """A round's CDRs as rows of their tables (`encode_row`), with their ids and flags."""
    return marshal.dumps(
        (
            [c.id for c in cdrs],
            [
                (c.direction == "inbound")
                | c.rated << 1
                | c.timed_out << 2
                | ("account_mismatch" in c.flags) << 3
                for c in cdrs
            ],
            [encode_row(c) for c in cdrs],
        ),
        MARSHAL_VERSION,
    )


def decode_rows(payload: bytes) -> list[RowEntry]:
    ids, flags, rows = marshal.loads(payload)
    return [
        RowEntry(i, DIRECTIONS[f & 1], bool(f & 2), bool(f & 4), bool(f & 8), r)
        for i, f, r in zip(ids, flags, rows, strict=True)
    ]


DIRECTIONS = ("outbound", "inbound")
