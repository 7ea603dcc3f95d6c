"""Writing CDRs: batched, column-oriented inserts into the direction's table.

Idempotency comes from the tables (ReplacingMergeTree on the call, versioned by ``revision``),
not from the writer: writing a CDR again, after a crash or a replay, leaves one row as seen by
readers (they use FINAL). So a failed batch may simply be written again.

Column-oriented data is measurably faster than rows with chDB (about 120k vs 90k CDRs/s), and
times are handed over as integer microsecond ticks: cheaper than the driver's datetime path,
and it pins naive datetimes to UTC instead of the process's local zone.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from operator import attrgetter
from typing import Any, NamedTuple

import orjson
from clickhouse_connect.driver import options
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError
from clickhouse_connect.driver.httpclient import HttpClient
from clickhouse_connect.driver.insert import InsertContext

from pipeline.core.model import CDR, TIME_FIELDS, Direction
from pipeline.store.client import COLUMNS, TABLES, StoreError

__all__ = ["DEFAULT_BATCH_SIZE", "INSERT_SETTINGS", "CdrWriter", "decode_row", "encode_row"]

DEFAULT_BATCH_SIZE = 50_000
#: Synchronous inserts: when `write` returns the rows are stored (and visible to FINAL reads).
INSERT_SETTINGS: dict[str, Any] = {"async_insert": 0}

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_TIME_COLUMNS = frozenset(TIME_FIELDS)
#: Decimal columns and their scale, as in schema.sql.
_DECIMAL_SCALE: dict[str, int] = {
    "rate": 9,
    "charged": 6,
    "toll_free_amount": 6,
    "termination_amount": 6,
    "metered_amount": 6,
}
_DECIMAL_PRECISION = 18
_QUANTUM = {scale: Decimal(1).scaleb(-scale) for scale in set(_DECIMAL_SCALE.values())}
_LIMIT = {scale: Decimal(1).scaleb(_DECIMAL_PRECISION - scale) for scale in _QUANTUM}
#: JSON records: ISO 8601 times with their offset; fields that are not columns of the
#: direction's table (``direction`` itself, the other direction's) are skipped.
JSON_INSERT_SETTINGS: dict[str, Any] = {
    **INSERT_SETTINGS,
    "date_time_input_format": "best_effort",
    "input_format_skip_unknown_fields": 1,
}
#: An embedded engine (chDB) inserts on this process's CPU: one thread parses and writes a
#: batch, without the thread pools a server's parallel parsing sets up per insert (less CPU
#: per row, docs/BENCHMARKS.md). A server keeps its own defaults.
EMBEDDED_JSON_INSERT_SETTINGS: dict[str, Any] = {
    **JSON_INSERT_SETTINGS,
    "input_format_parallel_parsing": 0,
    "max_threads": 1,
    "max_insert_threads": 1,
}


def _ticks(value: datetime | None) -> int | None:
    """Microseconds since the epoch; a naive datetime is taken as UTC (never local time)."""
    if value is None:
        return None
    try:
        return (value - _EPOCH) // _MICROSECOND
    except TypeError:  # naive
        return (value.replace(tzinfo=UTC) - _EPOCH) // _MICROSECOND


def _ticks_column(values: list[Any]) -> list[int | None]:
    """`_ticks` of every value; aware datetimes (all of ours) without a call per value."""
    epoch, microsecond = _EPOCH, _MICROSECOND
    try:
        return [None if v is None else (v - epoch) // microsecond for v in values]
    except TypeError:  # a naive one among them
        return [_ticks(v) for v in values]


def _exact(name: str, value: Any) -> bool:
    """Whether `value` is a Decimal the column `name` holds exactly (the driver, and
    ClickHouse's own text parsers, would truncate extra decimal places silently)."""
    scale = _DECIMAL_SCALE[name]
    try:
        return (
            type(value) is Decimal
            and value.is_finite()
            and abs(value) < _LIMIT[scale]
            and value == value.quantize(_QUANTUM[scale])
        )
    except InvalidOperation:
        return False


def _inexact(name: str, value: Any, call_id: Any) -> StoreError:
    scale = _DECIMAL_SCALE[name]
    return StoreError(
        f"CDR {call_id!r}: {name}={value!r} is not a Decimal with at most"
        f" {scale} decimal places and below {_LIMIT[scale]:f} in size"
    )


def _check_decimals(name: str, values: Sequence[Any], batch: Sequence[CDR]) -> None:
    """Refuse money the column cannot hold exactly."""
    for value, cdr in zip(values, batch, strict=True):
        if value is not None and not _exact(name, value):
            raise _inexact(name, value, cdr.id)


def _json_money(name: str, value: Any, call_id: Any) -> str:
    """A money value of a JSON record as plain decimal text, if the column holds it exactly.

    Money travels as decimal strings; a JSON number is a float somewhere upstream: refused."""
    try:
        exact = type(value) is str and _exact(name, Decimal(value))
    except InvalidOperation:
        exact = False
    if not exact:
        raise _inexact(name, value, call_id)
    return format(Decimal(value), "f")


class _JsonDirection(NamedTuple):
    columns: frozenset[str]
    money: tuple[tuple[str, re.Pattern[str]], ...]  # column, plain text it holds exactly


def _plain_decimal(scale: int) -> re.Pattern[str]:
    """Plain decimal text (no exponent) with at most `scale` places that fits the column."""
    return re.compile(
        rf"-?(?:0|[1-9][0-9]{{0,{_DECIMAL_PRECISION - scale - 1}}})(?:\.[0-9]{{1,{scale}}})?"
    )


#: Per scale: plain decimal text a column of that scale holds exactly (JSON records and rows).
_PLAIN = {scale: _plain_decimal(scale) for scale in set(_DECIMAL_SCALE.values())}
_JSON_DIRECTIONS: dict[str, _JsonDirection] = {
    direction: _JsonDirection(
        frozenset(columns),
        tuple((name, _PLAIN[_DECIMAL_SCALE[name]]) for name in columns if name in _DECIMAL_SCALE),
    )
    for direction, columns in COLUMNS.items()
}
#: Fields a record may omit (written before they existed): the `CDR` defaults.
_DEFAULTS: dict[str, Any] = {
    f.name: f.default for f in dataclasses.fields(CDR) if f.default is not dataclasses.MISSING
}


def _json_record(raw: bytes) -> tuple[str, bytes]:
    """(direction, record ready for JSONEachRow) of one CDR in its JSON wire form."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise StoreError(f"a CDR record is not JSON: {exc}") from None
    direction = data.get("direction") if type(data) is dict else None
    if not isinstance(direction, str) or direction not in _JSON_DIRECTIONS:
        raise StoreError(f"a CDR record has no known direction: {raw[:200]!r}")
    spec = _JSON_DIRECTIONS[direction]
    changed = False
    for name, plain in spec.money:
        value = data.get(name)
        if value is not None and not (type(value) is str and plain.fullmatch(value)):
            data[name] = _json_money(name, value, data.get("id"))
            changed = True
    if not data.keys() >= spec.columns:
        for name in spec.columns - data.keys():
            if name not in _DEFAULTS:
                raise StoreError(f"CDR record {data.get('id')!r} lacks {name!r}")
            data[name] = _DEFAULTS[name]
        changed = True
    return direction, orjson.dumps(data) if changed else raw


# ---------------------------------------------------------------- rows (JSONCompactEachRow)
# A CDR as one row of its direction's table: a JSON array of `COLUMNS[direction]` in order,
# times in ISO 8601 with their offset, money as plain decimal text checked to fit its column.
# A parallel replay's workers encode their CDRs so; the parent, which alone may write to an
# embedded store, passes the bytes through (`CdrWriter.write_rows`) instead of rebuilding CDRs
# and columns in Python: about half the CPU per CDR (docs/BENCHMARKS.md).

ROW_FORMAT = "JSONCompactEachRow"
_ROW_GET = {direction: attrgetter(*columns) for direction, columns in COLUMNS.items()}
_ROW_MONEY = {
    direction: tuple((i, name) for i, name in enumerate(columns) if name in _DECIMAL_SCALE)
    for direction, columns in COLUMNS.items()
}
_ROW_TIMES = {
    direction: tuple(i for i, name in enumerate(columns) if name in _TIME_COLUMNS)
    for direction, columns in COLUMNS.items()
}


#: Per money column: the row text of each Decimal text seen (itself, if plain and exact).
#: Charges and rates recur (a deck has few rows, `rating` remembers charges), so most are found
#: here, several times cheaper than the pattern. Keyed by text, not value, so a row stays a
#: function of its CDR alone (Decimal("0E-6") and Decimal("0") are equal, not written alike).
_MONEY_TEXT: dict[str, dict[str, str]] = {name: {} for name in _DECIMAL_SCALE}
_MONEY_TEXT_SIZE = 1 << 16


def _row_money(name: str, value: Any, call_id: str) -> str:
    if type(value) is not Decimal:
        raise _inexact(name, value, call_id)
    text = str(value)
    known = _MONEY_TEXT[name]
    row = known.get(text)
    if row is None:
        if _PLAIN[_DECIMAL_SCALE[name]].fullmatch(text):
            row = text
        elif _exact(name, value):
            row = format(value, "f")
        else:
            raise _inexact(name, value, call_id)
        if len(known) >= _MONEY_TEXT_SIZE:
            known.clear()
        known[text] = row
    return row


def encode_row(cdr: CDR) -> bytes:
    """The CDR as one row of its direction's table; StoreError for an unknown direction or
    money its column cannot hold exactly."""
    get = _ROW_GET.get(cdr.direction)
    if get is None:
        raise StoreError(f"CDR {cdr.id!r} has unknown direction {cdr.direction!r}")
    values = list(get(cdr))
    for i, name in _ROW_MONEY[cdr.direction]:
        value = values[i]
        if value is not None:
            values[i] = _row_money(name, value, cdr.id)
    try:
        return orjson.dumps(values)
    except TypeError as exc:  # e.g. a time that is not a datetime
        raise StoreError(f"CDR {cdr.id!r} cannot be written as a row: {exc}") from None


def decode_row(direction: Direction, raw: bytes) -> CDR:
    """The CDR of a row `encode_row` wrote (fields the direction lacks are None); equal to the
    one encoded, with money as the text sent (Decimal("0E-6") comes back as 0.000000)."""
    values = orjson.loads(raw)
    for i in _ROW_TIMES[direction]:
        if values[i] is not None:
            values[i] = datetime.fromisoformat(values[i])
    for i, _ in _ROW_MONEY[direction]:
        if values[i] is not None:
            values[i] = Decimal(values[i])
    data = dict(zip(COLUMNS[direction], values, strict=True))
    data["flags"] = tuple(data["flags"])
    return CDR(direction=direction, **data)


class CdrWriter:
    """Stores CDRs in the table of their direction, in batches of `batch_size` rows."""

    def __init__(self, client: Client, *, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self._client = client
        self._batch_size = batch_size
        embedded = not isinstance(client, HttpClient)
        self._json_settings = EMBEDDED_JSON_INSERT_SETTINGS if embedded else JSON_INSERT_SETTINGS
        # The driver imports pandas (if installed) at the first insert to check the data's type:
        # ~0.5 s of CPU a streaming sink would otherwise spend on its first live batch.
        _ = options.pd
        self._contexts: dict[str, InsertContext] = {}
        self._getters: dict[str, list[tuple[str, Callable[[Any], Any]]]] = {
            direction: [(name, attrgetter(name)) for name in columns]
            for direction, columns in COLUMNS.items()
        }

    def write(self, cdrs: Iterable[CDR]) -> int:
        """Insert `cdrs`; returns how many were written. Safe to repeat (idempotent)."""
        buffers: dict[str, list[CDR]] = {direction: [] for direction in TABLES}
        written = 0
        for cdr in cdrs:
            buffer = buffers.get(cdr.direction)
            if buffer is None:
                raise StoreError(f"CDR {cdr.id!r} has unknown direction {cdr.direction!r}")
            buffer.append(cdr)
            if len(buffer) >= self._batch_size:
                written += self._insert(cdr.direction, buffer)
                buffer.clear()
        for direction, buffer in buffers.items():
            if buffer:
                written += self._insert(direction, buffer)
        return written

    def write_json(self, records: Iterable[bytes]) -> int:
        """Insert CDRs given in their JSON wire form (`pipeline.stream.codec`): ClickHouse
        parses them (JSONEachRow), a third of the cost of building `CDR`s in Python first.

        Each record is still decoded once here, to find its table and to refuse money the
        column cannot hold exactly (ClickHouse would drop extra decimal places silently).
        Versions of one call may come together: the table keeps the highest revision.
        """
        by_direction: dict[str, list[bytes]] = {direction: [] for direction in TABLES}
        for raw in records:
            direction, record = _json_record(raw)
            by_direction[direction].append(record)
        written = 0
        for direction, rows in by_direction.items():
            for i in range(0, len(rows), self._batch_size):
                chunk = rows[i : i + self._batch_size]
                self._raw_insert(direction, "JSONEachRow", b"\n".join(chunk), len(chunk))
                written += len(chunk)
        return written

    def write_rows(self, direction: str, rows: Sequence[bytes]) -> int:
        """Insert rows `encode_row` made of CDRs of `direction`; ClickHouse parses them.
        Safe to repeat, like `write`."""
        if direction not in TABLES:
            raise StoreError(f"unknown direction {direction!r}")
        for i in range(0, len(rows), self._batch_size):
            chunk = rows[i : i + self._batch_size]
            self._raw_insert(direction, ROW_FORMAT, b"\n".join(chunk), len(chunk))
        return len(rows)

    def _raw_insert(self, direction: str, fmt: str, data: bytes, count: int) -> None:
        try:
            self._client.raw_insert(
                TABLES[direction],
                list(COLUMNS[direction]),
                data,
                settings=self._json_settings,
                fmt=fmt,
            )
        except ClickHouseError as ex:
            raise StoreError(f"cannot store {count} {direction} CDR records: {ex}") from ex

    def _columns(self, direction: str, batch: Sequence[CDR]) -> list[list[Any]]:
        data: list[list[Any]] = []
        for name, get in self._getters[direction]:
            values = list(map(get, batch))
            if name in _TIME_COLUMNS:
                values = _ticks_column(values)
            elif name in _DECIMAL_SCALE:
                _check_decimals(name, values, batch)
            data.append(values)
        return data

    def _insert(self, direction: str, batch: Sequence[CDR]) -> int:
        data = self._columns(direction, batch)
        try:
            context = self._contexts.get(direction)
            if context is None:
                context = self._client.create_insert_context(
                    TABLES[direction],
                    column_names=list(COLUMNS[direction]),
                    column_oriented=True,
                    settings=INSERT_SETTINGS,
                )
                self._contexts[direction] = context
            context.data = data
            self._client.insert(context=context)
        except (ClickHouseError, OverflowError, ValueError, TypeError) as ex:
            raise StoreError(
                f"cannot store {len(batch)} {direction} CDRs (first id {batch[0].id!r}): {ex}"
            ) from ex
        return len(batch)
