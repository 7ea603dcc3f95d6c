"""Writing CDRs: batched, column-oriented inserts into the direction's table.

Idempotency comes from the tables (ReplacingMergeTree on the call, versioned by ``revision``),
not from the writer: writing a CDR again, after a crash or a replay, leaves one row as seen by
readers (they use FINAL). So a failed batch may simply be written again.

Column-oriented data is measurably faster than rows with chDB (about 120k vs 90k CDRs/s), and
times are handed over as integer microsecond ticks: cheaper than the driver's datetime path,
and it pins naive datetimes to UTC instead of the process's local zone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from operator import attrgetter
from typing import Any

from clickhouse_connect.driver import options
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError
from clickhouse_connect.driver.insert import InsertContext

from pipeline.core.model import CDR
from pipeline.store.client import COLUMNS, TABLES, StoreError

__all__ = ["DEFAULT_BATCH_SIZE", "INSERT_SETTINGS", "CdrWriter"]

DEFAULT_BATCH_SIZE = 50_000
#: Synchronous inserts: when `write` returns the rows are stored (and visible to FINAL reads).
INSERT_SETTINGS: dict[str, Any] = {"async_insert": 0}

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_TIME_COLUMNS = frozenset({"start_time", "connect_time", "end_time"})
#: Decimal columns and their scale, as in schema.sql.
_DECIMAL_SCALE: dict[str, int] = {
    "rate": 9,
    "charged": 6,
    "toll_free_amount": 6,
    "termination_amount": 6,
    "metered_amount": 6,
}
_DECIMAL_PRECISION = 18


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


def _check_decimals(name: str, values: Sequence[Any], batch: Sequence[CDR]) -> None:
    """Refuse money the column cannot hold exactly: the driver would truncate it silently."""
    scale = _DECIMAL_SCALE[name]
    quantum = Decimal(1).scaleb(-scale)
    limit = Decimal(1).scaleb(_DECIMAL_PRECISION - scale)
    for value, cdr in zip(values, batch, strict=True):
        if value is None:
            continue
        try:
            exact = (
                type(value) is Decimal
                and value.is_finite()
                and abs(value) < limit
                and value == value.quantize(quantum)
            )
        except InvalidOperation:
            exact = False
        if not exact:
            raise StoreError(
                f"CDR {cdr.id!r}: {name}={value!r} is not a Decimal with at most"
                f" {scale} decimal places and below {limit:f} in size"
            )


class CdrWriter:
    """Stores CDRs in the table of their direction, in batches of `batch_size` rows."""

    def __init__(self, client: Client, *, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self._client = client
        self._batch_size = batch_size
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
