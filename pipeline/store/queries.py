"""Reading CDRs: the analysts' filter, streamed selects, counts and totals.

Every query reads with FINAL, so a call stored several times (replays, corrections) shows
once, in its highest revision. User values only ever travel as server-side query parameters
(``{name:Type}``, supported by chDB and a server alike); the SQL text holds code constants only.

Rows older than the two-month retention are hidden even before the TTL merge removes them, so
"only the last two months exist" holds exactly, whatever the merge schedule.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal
from operator import add, attrgetter
from typing import Any, ClassVar, get_args

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
    "FlagCounts",
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


#: Filter fields that select the column of the same name by equality: name, parameter type.
_EQUALS = (("cdr_type", "String"), ("status", "String"), ("rated", "Bool"), ("timed_out", "Bool"))


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
    for name, kind in _EQUALS:
        value = getattr(flt, name)
        if value is not None:
            clauses.append(f"{name} = {{{name}:{kind}}}")
            params[name] = value
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


Kind = tuple[bool, bool, tuple[str, ...]]  # `FlagCounts.kind`: (rated, timed_out, flags)

#: Every count of `FlagCounts`, in field order: name -> condition (code constants).
_COUNTED: dict[str, str] = {"unrated": "NOT rated", "timed_out": "timed_out", **FLAG_COUNTS}


@dataclass(frozen=True, slots=True)
class FlagCounts:
    """How many CDRs are unrated, timed out and flagged (`FLAG_COUNTS`): the counts that
    `totals`, the KPI rows and the re-rating summary report, defined here only. `SQL` counts
    them in a query, `of_kind` counts a CDR in Python by the same conditions, and rows of
    counts add up (`+`, `plus`, `tally`), so the figures agree however they were counted."""

    unrated: int = 0
    timed_out: int = 0
    account_mismatch: int = 0
    unknown_trunk: int = 0
    unknown_did: int = 0
    no_rate: int = 0
    unrated_timed_out: int = 0

    #: The select list of the counts, one column per field in field order (see `read`).
    SQL: ClassVar[str] = ", ".join(f"countIf({cond})" for cond in _COUNTED.values())

    @staticmethod
    def kind(cdr: CDR) -> Kind:
        """What the counts of a CDR depend on; CDRs of a kind count alike (`tally`)."""
        return (cdr.rated, cdr.timed_out, cdr.flags)

    @staticmethod
    def of_kind(kind: Kind) -> FlagCounts:
        """The counts of one CDR of this `kind` (0 or 1 each): what `SQL` counts for its row."""
        counts = _ONE.get(kind)
        if counts is None:  # a handful of kinds: each worked out once
            rated, timed_out, flags = kind
            counts = _ONE[kind] = FlagCounts(
                unrated=int(not rated),
                timed_out=int(timed_out),
                account_mismatch=int("account_mismatch" in flags),
                unknown_trunk=int("unknown_trunk" in flags),
                unknown_did=int("unknown_did" in flags),
                no_rate=int("no_rate" in flags),
                unrated_timed_out=int(timed_out and not rated),
            )
        return counts

    @staticmethod
    def read(columns: Sequence[Any]) -> dict[str, int]:
        """The counts in the `SQL` columns of a result row, as keyword arguments (of this
        class or of a row that extends it)."""
        return {name: int(value) for name, value in zip(_COUNTED, columns, strict=True)}

    def plus(self, other: FlagCounts) -> dict[str, int]:
        """Both rows' counts summed, as keyword arguments (of this class or of a row that
        extends it)."""
        return dict(zip(_COUNTED, map(add, _counts(self), _counts(other)), strict=True))

    def __add__(self, other: FlagCounts) -> FlagCounts:
        return FlagCounts(*map(add, _counts(self), _counts(other)))

    @staticmethod
    def tally(kinds: Mapping[Kind, int]) -> FlagCounts:
        """The counts of CDRs tallied by `kind` (``{kind: CDRs}``): a tally is far cheaper to
        keep per CDR than a sum of rows."""
        sums = [0] * len(_COUNTED)
        for kind, n in kinds.items():
            for i, value in enumerate(_counts(FlagCounts.of_kind(kind))):
                sums[i] += value * n
        return FlagCounts(*sums)


_counts = attrgetter(*_COUNTED)  # a row's counts, in field order
_ONE: dict[Kind, FlagCounts] = {}  # `FlagCounts.of_kind`


@dataclass(frozen=True, slots=True, kw_only=True)
class Totals(FlagCounts):
    """Summary of the CDRs matching a filter: their count, `FlagCounts` and money sums. Money
    sums are exact Decimals; the amounts that belong to the other direction are None."""

    count: int
    charged: Decimal | None = None
    toll_free_amount: Decimal | None = None
    termination_amount: Decimal | None = None
    metered_amount: Decimal | None = None


def totals(client: Client, flt: CdrFilter) -> Totals:
    """Count, `FlagCounts` and money sums of the CDRs matching `flt`."""
    where, params = _where(flt)
    money = _MONEY[flt.direction]
    sums = "".join(f", sum({name})" for name in money)
    sql = f"SELECT count(){sums}, {FlagCounts.SQL} FROM {flt.table} FINAL WHERE {where}"
    row = _one_row(client, sql, params)
    amounts = {
        name: Decimal(0) if value is None else Decimal(value)
        for name, value in zip(money, row[1 : 1 + len(money)], strict=True)
    }
    return Totals(
        count=int(row[0]),
        **FlagCounts.read(row[1 + len(money) :]),
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
