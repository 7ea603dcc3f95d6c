"""Reading CDRs: the analysts' filter, streamed selects, counts and totals.

Every query reads with FINAL, so a call stored several times (replays, corrections) shows
once, in its highest revision. User values only ever travel as server-side query parameters
(``{name:Type}``, supported by chDB and a server alike); the SQL text holds code constants only.

Rows older than the two-month retention are hidden even before the TTL merge removes them, so
"only the last two months exist" holds exactly, whatever the merge schedule.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any, get_args

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from pipeline.core.model import CDR, CDR_FIELDS, FLAGS, CdrType, Direction, Flag, Status
from pipeline.store.client import COLUMNS, TABLES, StoreError

__all__ = [
    "CDR_TYPES",
    "DIRECTIONS",
    "FLAGS",
    "STATUSES",
    "FLAG_COUNTS",
    "CdrFilter",
    "Totals",
    "count_cdrs",
    "select_cdrs",
    "totals",
]

DIRECTIONS: tuple[str, ...] = get_args(Direction)
CDR_TYPES: tuple[str, ...] = get_args(CdrType)
STATUSES: tuple[str, ...] = get_args(Status)

_DT = "DateTime64(6, 'UTC')"
# Same expression as the table TTL: a row is visible while its TTL has not expired.
_RETAINED = "toDateTime(start_time) + INTERVAL 2 MONTH > now()"
# Every version of a call sits in one partition (the partition key, the start day, never
# changes for a call), so FINAL need not merge across partitions: that is much cheaper.
_SELECT_SETTINGS: dict[str, Any] = {"do_not_merge_across_partitions_select_final": 1}
_CDR_FIELDS = CDR_FIELDS
_MONEY: dict[str, tuple[str, ...]] = {
    "outbound": ("charged",),
    "inbound": ("toll_free_amount", "termination_amount", "metered_amount"),
}


def _as_utc(value: object, name: str) -> datetime:
    """Aware UTC datetime from a datetime (naive = UTC) or a date (its midnight UTC)."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, date):
        return datetime.combine(value, time(), tzinfo=UTC)
    raise ValueError(f"{name} must be a datetime or date, got {value!r}")


def _choice(value: object, name: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        options = ", ".join(repr(a) for a in allowed)
        raise ValueError(f"{name} must be one of {options}; got {value!r}")


@dataclass(frozen=True, slots=True)
class CdrFilter:
    """What an analyst asks for (SPEC section 5); validated on construction.

    ``time_from`` is inclusive and ``time_to`` exclusive, both on the call start; naive times
    are UTC and a date means its midnight UTC. ``account`` matches exactly. ``source`` and
    ``destination`` are prefix matches on the digits; for inbound calls ``destination`` also
    matches the DID, the number the caller dialled, since the destination is a URI there.
    ``rated`` and ``timed_out`` select on the bookkeeping flags (e.g. calls to re-rate);
    ``flag`` keeps the CDRs carrying that flag (one of `FLAGS`, e.g. ``account_mismatch``).
    """

    direction: Direction
    time_from: datetime | None = None
    time_to: datetime | None = None
    account: str | None = None
    source: str | None = None
    destination: str | None = None
    cdr_type: CdrType | None = None
    status: Status | None = None
    rated: bool | None = None
    timed_out: bool | None = None
    flag: Flag | None = None

    def __post_init__(self) -> None:
        _choice(self.direction, "direction", DIRECTIONS)
        if self.flag is not None:
            _choice(self.flag, "flag", FLAGS)
        if self.cdr_type is not None:
            _choice(self.cdr_type, "cdr_type", CDR_TYPES)
        if self.status is not None:
            _choice(self.status, "status", STATUSES)
        for name in ("time_from", "time_to"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _as_utc(value, name))
        if self.time_from and self.time_to and self.time_from >= self.time_to:
            raise ValueError(
                f"time_from ({self.time_from:%Y-%m-%d %H:%M:%S}) must be before"
                f" time_to ({self.time_to:%Y-%m-%d %H:%M:%S})"
            )
        for name in ("account", "source", "destination"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{name} must be a string, got {value!r}")
        for name in ("rated", "timed_out"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                raise ValueError(f"{name} must be true or false, got {value!r}")

    @classmethod
    def from_strings(
        cls,
        *,
        direction: str,
        time_from: str | None = None,
        time_to: str | None = None,
        account: str | None = None,
        source: str | None = None,
        destination: str | None = None,
        cdr_type: str | None = None,
        status: str | None = None,
        flag: str | None = None,
    ) -> CdrFilter:
        """Build a filter from command-line / query-string text; empty text means no filter.

        Times are ISO 8601: ``2024-05-01``, ``2024-05-01 10:00[:00]``, ``...T10:00:00Z`` or
        with an offset; without an offset they are UTC.
        """

        def text(value: str | None) -> str | None:
            return value if value else None

        def when(value: str | None, name: str) -> datetime | None:
            if not value:
                return None
            try:
                return _as_utc(datetime.fromisoformat(value.strip()), name)
            except ValueError:
                raise ValueError(
                    f"{name} must be an ISO date or date-time such as 2024-05-01 or"
                    f" 2024-05-01T10:00:00Z; got {value!r}"
                ) from None

        return cls(
            direction=direction,  # type: ignore[arg-type]  # validated in __post_init__
            time_from=when(time_from, "time_from"),
            time_to=when(time_to, "time_to"),
            account=text(account),
            source=text(source),
            destination=text(destination),
            cdr_type=text(cdr_type),  # type: ignore[arg-type]
            status=text(status),  # type: ignore[arg-type]
            flag=text(flag),  # type: ignore[arg-type]
        )

    @property
    def table(self) -> str:
        return TABLES[self.direction]


def _where(flt: CdrFilter) -> tuple[str, dict[str, Any]]:
    """The WHERE clause (code constants only) and its parameter values."""
    clauses = [_RETAINED]
    params: dict[str, Any] = {}
    if flt.time_from is not None:
        clauses.append(f"start_time >= {{time_from:{_DT}}}")
        params["time_from"] = flt.time_from
    if flt.time_to is not None:
        clauses.append(f"start_time < {{time_to:{_DT}}}")
        params["time_to"] = flt.time_to
    if flt.account is not None:
        clauses.append("account = {account:String}")
        params["account"] = flt.account
    if flt.source:
        clauses.append("startsWith(source, {source:String})")
        params["source"] = flt.source
    if flt.destination:
        if flt.direction == "inbound":
            clauses.append(
                "(startsWith(destination, {destination:String})"
                " OR startsWith(ifNull(did, ''), {destination:String}))"
            )
        else:
            clauses.append("startsWith(destination, {destination:String})")
        params["destination"] = flt.destination
    if flt.cdr_type is not None:
        clauses.append("cdr_type = {cdr_type:String}")
        params["cdr_type"] = flt.cdr_type
    if flt.status is not None:
        clauses.append("status = {status:String}")
        params["status"] = flt.status
    if flt.rated is not None:
        clauses.append("rated = {rated:Bool}")
        params["rated"] = flt.rated
    if flt.timed_out is not None:
        clauses.append("timed_out = {timed_out:Bool}")
        params["timed_out"] = flt.timed_out
    if flt.flag is not None:
        clauses.append("has(flags, {flag:String})")
        params["flag"] = flt.flag
    return " AND ".join(clauses), params


def _select_list(direction: Direction) -> str:
    """Columns in `CDR` field order, NULL for the other direction's fields, so that each
    result row is the CDR's positional arguments: no per-row mapping in Python."""
    stored = set(COLUMNS[direction])
    return ", ".join(
        name if name in stored else "{direction:String}" if name == "direction" else "NULL"
        for name in _CDR_FIELDS
    )


def select_cdrs(
    client: Client,
    flt: CdrFilter,
    *,
    limit: int | None = None,
    offset_after: tuple[datetime, str] | None = None,
) -> Iterator[CDR]:
    """CDRs matching `flt`, ordered by (start_time, id), streamed block by block.

    ``offset_after`` is a keyset cursor, the (start_time, id) of the last CDR of the previous
    page: unlike OFFSET it stays cheap and stable however deep the page. Memory stays flat
    however many rows match. Consume or close the iterator before the next query on the same
    chDB client: its handle serves one result stream at a time.
    """
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a non-negative integer, got {limit!r}")
    where, params = _where(flt)
    if offset_after is not None:
        after_time, after_id = offset_after
        where += f" AND (start_time, id) > ({{after_time:{_DT}}}, {{after_id:String}})"
        params["after_time"] = _as_utc(after_time, "offset_after time")
        params["after_id"] = str(after_id)
    params["direction"] = flt.direction
    sql = (
        f"SELECT {_select_list(flt.direction)} FROM {flt.table} FINAL WHERE {where}"
        " ORDER BY start_time, id"
    )
    if limit is not None:
        sql += " LIMIT {limit:UInt64}"
        params["limit"] = limit
    return _stream(client, sql, params)


def _stream(client: Client, sql: str, params: dict[str, Any]) -> Iterator[CDR]:
    try:
        # tz_mode="aware": chDB would hand DateTime64 back naive (it is UTC); this way every
        # backend gives aware UTC datetimes, as the rest of the pipeline uses
        with client.query_row_block_stream(
            sql, parameters=params, settings=_SELECT_SETTINGS, tz_mode="aware"
        ) as stream:
            for block in stream:
                for row in block:
                    cdr = CDR(*row)
                    cdr.flags = tuple(cdr.flags)  # an Array arrives as a list
                    yield cdr
    except ClickHouseError as ex:
        raise StoreError(f"CDR query failed: {ex}") from ex


def count_cdrs(client: Client, flt: CdrFilter) -> int:
    """How many CDRs match `flt` (each call once)."""
    where, params = _where(flt)
    sql = f"SELECT count() FROM {flt.table} FINAL WHERE {where}"
    return int(_one_row(client, sql, params)[0])


#: Counts of flagged CDRs that `totals` and the KPIs report: name -> condition (code constants).
#: ``account_mismatch`` is stored under the trunk's or DID's owner; the other four say why a
#: CDR is unrated (a CDR may have more than one reason, e.g. timed out and unknown trunk).
FLAG_COUNTS: dict[str, str] = {
    "account_mismatch": "has(flags, 'account_mismatch')",
    "unknown_trunk": "has(flags, 'unknown_trunk')",
    "unknown_did": "has(flags, 'unknown_did')",
    "no_rate": "has(flags, 'no_rate')",
    "unrated_timed_out": "timed_out AND NOT rated",
}


@dataclass(frozen=True, slots=True)
class Totals:
    """Summary of the CDRs matching a filter. Money sums are exact Decimals; the amounts that
    belong to the other direction are None. ``unknown_trunk``, ``unknown_did``, ``no_rate``
    and ``unrated_timed_out`` count the unrated CDRs by reason (see `FLAG_COUNTS`)."""

    count: int
    unrated: int
    timed_out: int
    account_mismatch: int = 0
    unknown_trunk: int = 0
    unknown_did: int = 0
    no_rate: int = 0
    unrated_timed_out: int = 0
    charged: Decimal | None = None
    toll_free_amount: Decimal | None = None
    termination_amount: Decimal | None = None
    metered_amount: Decimal | None = None


def totals(client: Client, flt: CdrFilter) -> Totals:
    """Count, unrated and timed-out counts, flag counts and money sums of the CDRs matching
    `flt`."""
    where, params = _where(flt)
    money = _MONEY[flt.direction]
    counts = "".join(f", countIf({cond})" for cond in FLAG_COUNTS.values())
    sums = "".join(f", sum({name})" for name in money)
    sql = (
        f"SELECT count(), countIf(NOT rated), countIf(timed_out){counts}{sums}"
        f" FROM {flt.table} FINAL WHERE {where}"
    )
    row = _one_row(client, sql, params)
    count, unrated, timed_out, mismatch, unknown_trunk, unknown_did, no_rate, unrated_timed_out = (
        int(n) for n in row[:8]
    )
    amounts = {
        name: Decimal(0) if value is None else Decimal(value)
        for name, value in zip(money, row[8:], strict=True)
    }
    return Totals(
        count=count,
        unrated=unrated,
        timed_out=timed_out,
        account_mismatch=mismatch,
        unknown_trunk=unknown_trunk,
        unknown_did=unknown_did,
        no_rate=no_rate,
        unrated_timed_out=unrated_timed_out,
        charged=amounts.get("charged"),
        toll_free_amount=amounts.get("toll_free_amount"),
        termination_amount=amounts.get("termination_amount"),
        metered_amount=amounts.get("metered_amount"),
    )


def _one_row(client: Client, sql: str, params: dict[str, Any]) -> tuple[Any, ...]:
    try:
        rows = client.query(sql, parameters=params, settings=_SELECT_SETTINGS).result_rows
    except ClickHouseError as ex:
        raise StoreError(f"CDR query failed: {ex}") from ex
    return tuple(rows[0])
