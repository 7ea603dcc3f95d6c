"""Traffic KPIs over the CDRs matching a filter, grouped by day, hour, trunk, country or type.

ClickHouse computes only additive integer and Decimal sums, in one parameterized query over the
same WHERE clause as the CDR list (`pipeline.store.queries._where`); the ratios are derived here
with exact decimal arithmetic. Because every measure is a sum, the totals are the sum of the
groups and need no second query (unless the group list was cut at `MAX_GROUPS`).

Definitions (docs/API.md repeats them):

* attempts: CDRs; answered: status ``answered`` (the call connected);
* ASR % = answered / attempts * 100; ACD s = answered seconds / answered calls;
* NER % = (answered + busy + no-answer + calls ended with SIP 603) / attempts * 100: the share of
  attempts the network delivered to the called party, whatever the party then did;
* seconds / minutes: billable call duration (0 for calls that never connected);
* billed seconds / minutes: outbound Billing Duration (inbound CDRs have none: null);
* charged: outbound Charged, inbound the sum of the toll-free, termination and metered amounts;
  unrated calls add nothing to it;
* unrated, timed out: CDRs with those bookkeeping flags;
* account_mismatch: CDRs whose event named another account than the owner of the trunk or
  DID (stored under the owner's); unknown_trunk, unknown_did, no_rate, unrated_timed_out: the
  unrated CDRs by reason (`pipeline.store.queries.FlagCounts`).

Ratios are rounded half-up (percentages to 2 places, ACD to 1) and null when their denominator
is 0; money is an exact Decimal with 6 places.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Literal

from clickhouse_connect.driver.exceptions import ClickHouseError

from pipeline.store.client import Client, StoreError
from pipeline.store.queries import CdrFilter, FlagCounts, _where

__all__ = ["GROUPS", "MAX_GROUPS", "GroupBy", "KpiReport", "KpiRow", "kpis"]

GroupBy = Literal["none", "day", "hour", "trunk", "country", "cdr_type"]

#: Group key expressions (code constants; the user picks one by name).
GROUPS: dict[str, str] = {
    "none": "''",
    "day": "toString(toDate(start_time))",
    "hour": "formatDateTime(toStartOfHour(start_time), '%Y-%m-%d %H:00')",
    "trunk": "trunk",
    "country": "country_name",
    "cdr_type": "cdr_type",
}
#: Time groups are listed in time order; the others busiest first.
_TIME_GROUPS = frozenset({"none", "day", "hour"})
MAX_GROUPS = 1000

_CHARGED: dict[str, str] = {
    "outbound": "sum(charged)",
    "inbound": "sum(ifNull(toll_free_amount, 0) + ifNull(termination_amount, 0)"
    " + ifNull(metered_amount, 0))",
}
_BILLED: dict[str, str] = {"outbound": "sum(billing_duration)", "inbound": "NULL"}
_MICRO = Decimal("0.000001")
_ZERO = Decimal("0.000000")
_CENT = Decimal("0.01")
_TENTH = Decimal("0.1")
_SELECT_SETTINGS: dict[str, Any] = {"do_not_merge_across_partitions_select_final": 1}


@dataclass(frozen=True, slots=True, kw_only=True)
class KpiRow(FlagCounts):
    """The KPIs of one group (``key`` "" for the totals), with its `FlagCounts`."""

    key: str
    attempts: int
    answered: int
    delivered: int
    seconds: int
    billed_seconds: int | None
    charged: Decimal

    @property
    def asr_pct(self) -> Decimal | None:
        return _ratio(self.answered * 100, self.attempts, _CENT)

    @property
    def ner_pct(self) -> Decimal | None:
        return _ratio(self.delivered * 100, self.attempts, _CENT)

    @property
    def acd_s(self) -> Decimal | None:
        return _ratio(self.seconds, self.answered, _TENTH)

    @property
    def minutes(self) -> Decimal:
        return (Decimal(self.seconds) / 60).quantize(_CENT, ROUND_HALF_UP)

    @property
    def billed_minutes(self) -> Decimal | None:
        if self.billed_seconds is None:
            return None
        return (Decimal(self.billed_seconds) / 60).quantize(_CENT, ROUND_HALF_UP)

    def __add__(self, other: KpiRow) -> KpiRow:
        billed = (
            None
            if self.billed_seconds is None or other.billed_seconds is None
            else self.billed_seconds + other.billed_seconds
        )
        return KpiRow(
            key=self.key,
            attempts=self.attempts + other.attempts,
            answered=self.answered + other.answered,
            delivered=self.delivered + other.delivered,
            seconds=self.seconds + other.seconds,
            billed_seconds=billed,
            charged=self.charged + other.charged,
            **self.plus(other),
        )


def _ratio(num: int, den: int, places: Decimal) -> Decimal | None:
    if den == 0:
        return None
    return (Decimal(num) / Decimal(den)).quantize(places, ROUND_HALF_UP)


def _empty(direction: str) -> KpiRow:
    return KpiRow(
        key="",
        attempts=0,
        answered=0,
        delivered=0,
        seconds=0,
        billed_seconds=0 if direction == "outbound" else None,
        charged=_ZERO,
    )


@dataclass(frozen=True, slots=True)
class KpiReport:
    """Totals over the filter, plus per-group rows (empty for ``group_by="none"``)."""

    group_by: str
    totals: KpiRow
    groups: list[KpiRow]
    truncated: bool


def _query(client: Client, flt: CdrFilter, group_by: str, limit: int | None) -> list[KpiRow]:
    where, params = _where(flt)
    order = "k" if group_by in _TIME_GROUPS else "attempts DESC, k"
    sql = (
        f"SELECT {GROUPS[group_by]} AS k, count() AS attempts,"
        " countIf(status = 'answered') AS answered,"
        " countIf(status IN ('answered', 'busy', 'no-answer') OR disconnect_code = 603),"
        f" sum(duration), {_BILLED[flt.direction]}, {_CHARGED[flt.direction]},"
        f" {FlagCounts.SQL} FROM {flt.table} FINAL WHERE {where}"
    )
    if group_by != "none":
        sql += f" GROUP BY k ORDER BY {order}"
    if limit is not None:
        sql += " LIMIT {max_groups:UInt32}"
        params["max_groups"] = limit
    try:
        rows = client.query(sql, parameters=params, settings=_SELECT_SETTINGS).result_rows
    except ClickHouseError as ex:
        raise StoreError(f"KPI query failed: {ex}") from ex
    out = []
    for row in rows:
        key, attempts, answered, delivered, seconds, billed, charged = row[:7]
        if attempts == 0:  # an aggregate without GROUP BY over no rows
            continue
        out.append(
            KpiRow(
                key=str(key),
                attempts=int(attempts),
                answered=int(answered),
                delivered=int(delivered),
                seconds=int(seconds),
                billed_seconds=int(billed or 0) if flt.direction == "outbound" else None,
                charged=(Decimal(0) if charged is None else Decimal(charged)).quantize(_MICRO),
                **FlagCounts.read(row[7:]),
            )
        )
    return out


def kpis(client: Client, flt: CdrFilter, group_by: str = "none") -> KpiReport:
    """The KPIs of the CDRs matching `flt`, overall and per `group_by` group."""
    if group_by not in GROUPS:
        raise ValueError(f"group_by must be one of {', '.join(GROUPS)}; got {group_by!r}")
    if group_by == "none":
        rows = _query(client, flt, "none", None)
        return KpiReport("none", rows[0] if rows else _empty(flt.direction), [], False)
    groups = _query(client, flt, group_by, MAX_GROUPS + 1)
    truncated = len(groups) > MAX_GROUPS
    if truncated:
        groups = groups[:MAX_GROUPS]
        rows = _query(client, flt, "none", None)
        total = rows[0] if rows else _empty(flt.direction)
    else:
        total = _empty(flt.direction)
        for row in groups:
            total = total + row
    return KpiReport(group_by, total, groups, truncated)
