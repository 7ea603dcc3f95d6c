"""Response bodies of the HTTP API: they shape the OpenAPI schema that clients and the fuzz test
rely on. Money travels as decimal strings (JSON numbers are binary floats); counts, seconds,
percentages and minutes as numbers."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, Field

from pipeline.api.kpi import KpiReport, KpiRow
from pipeline.core.model import CDR
from pipeline.store.queries import CdrFilter

__all__ = [
    "AppliedFilter",
    "CdrOut",
    "CdrPage",
    "ErrorBody",
    "Health",
    "KpiOut",
    "KpiRowOut",
    "Me",
    "cdr_out",
    "filter_out",
    "kpi_out",
    "unrated_fields",
]


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer: a stable machine code and a sentence for people."""

    error: str = Field(description="bad_request, unauthorized, forbidden, not_found, ...")
    message: str


class Me(BaseModel):
    key_id: str
    admin: bool
    account: str | None = Field(description="the only account this key can read; null = admin")


class Health(BaseModel):
    status: Literal["ok"]


class AppliedFilter(BaseModel):
    """The filter as applied: defaults filled in and the key's account forced."""

    direction: Literal["inbound", "outbound"]
    time_from: str = Field(serialization_alias="from", description="inclusive, UTC ISO 8601")
    time_to: str = Field(serialization_alias="to", description="exclusive, UTC ISO 8601")
    account: str | None
    source: str | None
    destination: str | None
    type: str | None
    status: str | None
    rated: bool | None
    timed_out: bool | None
    flag: str | None


class CdrOut(BaseModel):
    """One CDR; fields of the other direction are null. Times are UTC ISO 8601."""

    id: str
    direction: Literal["inbound", "outbound"]
    account: str
    gateway: str
    start_time: str
    connect_time: str | None
    end_time: str
    source: str
    destination: str
    duration: int
    disconnect_code: int | None
    disconnect_reason: str
    disconnect_initiator: str | None
    status: str
    cdr_type: str
    country_name: str
    network_name: str
    trunk: str
    cli: str | None
    billing_duration: int | None
    rate: str | None = Field(description="USD per minute, as in the rate deck")
    charged: str | None = Field(description="USD, 6 decimals")
    did: str | None
    toll_free_amount: str | None
    termination_amount: str | None
    metered_amount: str | None
    rated: bool
    timed_out: bool
    flags: list[str] = Field(
        description="account_mismatch (stored under the trunk's or DID's owner), unknown_trunk,"
        " unknown_did, no_rate (the last three: why the call is unrated)"
    )
    unrated_fields: list[str] = Field(
        description="fields left empty because the call is not rated; any other empty amount"
        " is a service not used (the CSV cannot tell the two apart)"
    )
    revision: int


class CdrPage(BaseModel):
    items: list[CdrOut]
    next_cursor: str | None = Field(
        description="pass as cursor= for the next page; null on the last page"
    )
    limit: int
    filter: AppliedFilter


class KpiRowOut(BaseModel):
    key: str = Field(description="group value (day, hour, trunk, ...); empty for totals")
    attempts: int
    answered: int
    asr_pct: float | None = Field(description="answered / attempts, percent")
    acd_s: float | None = Field(description="answered seconds / answered calls")
    ner_pct: float | None = Field(
        description="(answered + busy + no-answer + SIP 603) / attempts, percent"
    )
    seconds: int
    minutes: float
    billed_seconds: int | None = Field(description="outbound Billing Duration; null inbound")
    billed_minutes: float | None
    charged: str = Field(description="USD, exact, 6 decimals")
    unrated: int
    timed_out: int
    account_mismatch: int = Field(
        description="CDRs whose event named another account than the trunk's or DID's owner"
    )
    unknown_trunk: int = Field(description="unrated: outbound trunk not in the reference data")
    unknown_did: int = Field(description="unrated: DID not in the reference data")
    no_rate: int = Field(description="unrated: no rate row matched")
    unrated_timed_out: int = Field(description="unrated: closed as timed out")


class KpiOut(BaseModel):
    group_by: str
    totals: KpiRowOut
    groups: list[KpiRowOut]
    truncated: bool = Field(description="true when only the first 1000 groups are listed")
    filter: AppliedFilter


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _money(value: Decimal | None) -> str | None:
    return None if value is None else format(value.quantize(Decimal("0.000001")), "f")


# Fields that a rated call fills and an unrated one may leave empty, per direction.
_RATED_FIELDS: dict[str, tuple[str, ...]] = {
    "outbound": ("billing_duration", "rate", "charged"),
    "inbound": ("toll_free_amount", "termination_amount", "metered_amount"),
}


def unrated_fields(c: CDR) -> list[str]:
    """The empty fields of `c` that are empty because it is not rated, not because the service
    was not used. An inbound call whose only reason is ``no_rate`` (its PSTN termination found
    no rate) keeps the toll-free and metered amounts that could be computed, so there only the
    termination amount is unrated; for any other reason (unknown DID, timed out, or none
    recorded) no empty amount can be trusted to mean "not used"."""
    if c.rated:
        return []
    names = _RATED_FIELDS[c.direction]
    if (
        c.direction == "inbound"
        and "no_rate" in c.flags
        and "unknown_did" not in c.flags
        and not c.timed_out
    ):
        names = ("termination_amount",)
    return [name for name in names if getattr(c, name) is None]


def cdr_out(c: CDR) -> CdrOut:
    return CdrOut(
        id=c.id,
        direction=c.direction,
        account=c.account,
        gateway=c.gateway,
        start_time=_iso(c.start_time) or "",
        connect_time=_iso(c.connect_time),
        end_time=_iso(c.end_time) or "",
        source=c.source,
        destination=c.destination,
        duration=c.duration,
        disconnect_code=c.disconnect_code,
        disconnect_reason=c.disconnect_reason,
        disconnect_initiator=c.disconnect_initiator,
        status=c.status,
        cdr_type=c.cdr_type,
        country_name=c.country_name,
        network_name=c.network_name,
        trunk=c.trunk,
        cli=c.cli,
        billing_duration=c.billing_duration,
        rate=None if c.rate is None else format(c.rate.normalize(), "f"),
        charged=_money(c.charged),
        did=c.did,
        toll_free_amount=_money(c.toll_free_amount),
        termination_amount=_money(c.termination_amount),
        metered_amount=_money(c.metered_amount),
        rated=c.rated,
        timed_out=c.timed_out,
        flags=list(c.flags),
        unrated_fields=unrated_fields(c),
        revision=c.revision,
    )


def filter_out(f: CdrFilter) -> AppliedFilter:
    return AppliedFilter(
        direction=f.direction,
        time_from=_iso(f.time_from) or "",
        time_to=_iso(f.time_to) or "",
        account=f.account,
        source=f.source,
        destination=f.destination,
        type=f.cdr_type,
        status=f.status,
        rated=f.rated,
        timed_out=f.timed_out,
        flag=f.flag,
    )


def _opt(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


def _row(r: KpiRow) -> KpiRowOut:
    return KpiRowOut(
        key=r.key,
        attempts=r.attempts,
        answered=r.answered,
        asr_pct=_opt(r.asr_pct),
        acd_s=_opt(r.acd_s),
        ner_pct=_opt(r.ner_pct),
        seconds=r.seconds,
        minutes=float(r.minutes),
        billed_seconds=r.billed_seconds,
        billed_minutes=_opt(r.billed_minutes),
        charged=format(r.charged, "f"),
        unrated=r.unrated,
        timed_out=r.timed_out,
        account_mismatch=r.account_mismatch,
        unknown_trunk=r.unknown_trunk,
        unknown_did=r.unknown_did,
        no_rate=r.no_rate,
        unrated_timed_out=r.unrated_timed_out,
    )


def kpi_out(report: KpiReport, f: CdrFilter) -> KpiOut:
    return KpiOut(
        group_by=report.group_by,
        totals=_row(report.totals),
        groups=[_row(g) for g in report.groups],
        truncated=report.truncated,
        filter=filter_out(f),
    )
