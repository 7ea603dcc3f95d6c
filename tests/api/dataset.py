"""A small fixed set of CDRs whose KPIs are worked out by hand in test_kpi.py.

Times are relative to today (UTC): rows older than two months vanish by TTL. Accounts:
``kpi-a`` (the hand-computed one), ``kpi-b`` (must never show up for kpi-a), ``evil``
(text that a spreadsheet would run as a formula, and odd unicode) and ``kpi-f`` (flagged and
unrated calls of every kind, counted by hand in test_flags.py).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from pipeline.core.model import CDR

D = Decimal
RATE = D("0.0123")
ZERO = D("0.000000")


def days() -> tuple[datetime, datetime]:
    """Midnight UTC two days ago and one day ago."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=2), today - timedelta(days=1)


def _out(
    n: str,
    account: str,
    at: datetime,
    status: str,
    *,
    duration: int = 0,
    billing: int | None = 0,
    code: int | None = 200,
    reason: str = "Bye",
    rate: Decimal | None = RATE,
    charged: Decimal | None = ZERO,
    trunk: str = "KT1",
    country: str = "United Kingdom",
    cdr_type: str = "International",
    rated: bool = True,
    timed_out: bool = False,
    flags: tuple[str, ...] = (),
    source: str = "12025550100",
    destination: str = "442071234567",
    cli: str | None = None,
) -> CDR:
    connected = status == "answered"
    return CDR(
        id=f"fx-{n}",
        direction="outbound",
        account=account,
        gateway="gw-fx",
        start_time=at,
        connect_time=at + timedelta(seconds=3) if connected else None,
        end_time=at + timedelta(seconds=3 + duration),
        source=source,
        destination=destination,
        duration=duration,
        disconnect_code=code,
        disconnect_reason=reason,
        disconnect_initiator=None if code is None else "origination",
        status=status,  # type: ignore[arg-type]
        cdr_type=cdr_type,  # type: ignore[arg-type]
        country_name=country,
        network_name="Fixed",
        trunk=trunk,
        cli=source if cli is None else cli,
        billing_duration=billing,
        rate=rate,
        charged=charged,
        rated=rated,
        timed_out=timed_out,
        flags=flags,
    )


def _in(
    n: str,
    account: str,
    at: datetime,
    status: str,
    *,
    duration: int = 0,
    code: int = 200,
    toll_free: Decimal | None = None,
    termination: Decimal | None = None,
    metered: Decimal | None = None,
    source: str = "4930123456",
    did: str = "18005550100",
    destination: str = "sip:pbx@example.com",
    rated: bool = True,
    flags: tuple[str, ...] = (),
) -> CDR:
    connected = status == "answered"
    return CDR(
        id=f"fx-{n}",
        direction="inbound",
        account=account,
        gateway="gw-fx",
        start_time=at,
        connect_time=at + timedelta(seconds=2) if connected else None,
        end_time=at + timedelta(seconds=2 + duration),
        source=source,
        destination=destination,
        duration=duration,
        disconnect_code=code,
        disconnect_reason="Bye" if code == 200 else "Busy Here",
        disconnect_initiator="destination",
        status=status,  # type: ignore[arg-type]
        cdr_type="International",
        country_name="United States",
        network_name="Toll-free",
        trunk="",
        did=did,
        toll_free_amount=toll_free,
        termination_amount=termination,
        metered_amount=metered,
        rated=rated,
        flags=flags,
    )


def fixed_cdrs() -> list[CDR]:
    d1, d2 = days()
    h = timedelta(hours=1)
    return [
        # kpi-a outbound, day 1
        _out(
            "o1", "kpi-a", d1 + 10 * h, "answered", duration=61, billing=120, charged=D("0.024600")
        ),
        _out(
            "o2",
            "kpi-a",
            d1 + 11 * h,
            "answered",
            duration=30,
            billing=30,
            rate=D("0.02"),
            charged=D("0.010000"),
            country="United States",
            cdr_type="Local",
            destination="12025550199",
        ),
        _out("o3", "kpi-a", d1 + 12 * h, "busy", code=486, reason="Busy Here", trunk="KT2"),
        _out(
            "o4",
            "kpi-a",
            d1 + 13 * h,
            "no-answer",
            code=480,
            reason="Temporarily Unavailable",
            trunk="KT2",
            country="Germany",
            cdr_type="Origin based",
            destination="4930987654",
        ),
        # kpi-a outbound, day 2
        _out("o5", "kpi-a", d2 + 9 * h, "failed", code=603, reason="Decline"),
        _out("o6", "kpi-a", d2 + 10 * h, "failed", code=503, reason="Service Unavailable"),
        _out(
            "o7",
            "kpi-a",
            d2 + 11 * h,
            "cancelled",
            code=487,
            reason="Request Terminated",
            trunk="KT2",
            country="Germany",
            cdr_type="Origin based",
            destination="4930987655",
        ),
        _out(
            "o8",
            "kpi-a",
            d2 + 12 * h,
            "answered",
            duration=10,
            billing=None,
            rate=None,
            charged=None,
            rated=False,
            trunk="KT2",
            country="France",
            destination="33142685301",
        ),
        _out("o9", "kpi-a", d2 + 13 * h, "failed", code=None, reason="Timed out", timed_out=True),
        _out(
            "o10",
            "kpi-a",
            d2 + 14 * h,
            "answered",
            duration=125,
            billing=180,
            rate=D("0.05"),
            charged=D("0.150000"),
            source="12025550111",
        ),
        # kpi-a inbound
        _in(
            "i1",
            "kpi-a",
            d1 + 10 * h + 30 * timedelta(minutes=1),
            "answered",
            duration=45,
            toll_free=D("0.018750"),
            metered=D("0.003000"),
        ),
        _in(
            "i2",
            "kpi-a",
            d1 + 11 * h + 30 * timedelta(minutes=1),
            "busy",
            code=486,
            toll_free=D("0.000000"),
        ),
        _in(
            "i3",
            "kpi-a",
            d2 + 10 * h + 30 * timedelta(minutes=1),
            "answered",
            duration=100,
            toll_free=D("0.041667"),
            termination=D("0.010000"),
            did="18005550101",
        ),
        # kpi-b: must never appear for kpi-a
        _out(
            "b1",
            "kpi-b",
            d1 + 10 * h,
            "answered",
            duration=1000,
            billing=1020,
            charged=D("9.999999"),
            trunk="KB1",
        ),
        _out(
            "b2",
            "kpi-b",
            d2 + 10 * h,
            "failed",
            code=503,
            reason="Service Unavailable",
            trunk="KB1",
        ),
        _in("bi1", "kpi-b", d2 + 11 * h, "answered", duration=5, toll_free=D("0.002083")),
        # evil: formula-looking and odd text
        _out(
            "e1",
            "evil",
            d1 + 15 * h,
            "answered",
            duration=5,
            billing=60,
            charged=D("0.001230"),
            reason='=HYPERLINK("http://x.invalid","y")',
            trunk="@trunk",
            country="+Country",
            cdr_type="Local",
            source="-12345",
            cli="\tcli",
            destination="=1+1",
        ),
        _in(
            "ei1",
            "evil",
            d2 + 15 * h,
            "answered",
            duration=7,
            toll_free=D("0.002917"),
            source="\r123",
            destination="sip:=cmd@example.com;ü=☎",
        ),
        *flagged_cdrs(d1, d2),
    ]


def flagged_cdrs(d1: datetime, d2: datetime) -> list[CDR]:
    """Account kpi-f: outbound f1..f5 (f1 and f5 account_mismatch; f2 unknown_trunk; f3 and f5
    no_rate; f4 timed out and unrated), inbound fi1..fi3 (fi1 unknown_did; fi2 no_rate on its
    PSTN termination, toll-free rated, metered not used; fi3 account_mismatch, rated)."""
    h = timedelta(hours=1)
    return [
        _out(
            "f1",
            "kpi-f",
            d1 + 16 * h,
            "answered",
            duration=20,
            billing=60,
            charged=D("0.012300"),
            trunk="KF1",
            flags=("account_mismatch",),
        ),
        _out(
            "f2",
            "kpi-f",
            d1 + 17 * h,
            "answered",
            duration=40,
            billing=None,
            rate=None,
            charged=None,
            rated=False,
            trunk="KF-unknown",
            flags=("unknown_trunk",),
        ),
        _out(
            "f3",
            "kpi-f",
            d2 + 16 * h,
            "answered",
            duration=50,
            billing=None,
            rate=None,
            charged=None,
            rated=False,
            trunk="KF1",
            destination="8881234567",
            flags=("no_rate",),
        ),
        _out(
            "f4",
            "kpi-f",
            d2 + 17 * h,
            "answered",
            duration=14_400,
            billing=None,
            rate=None,
            charged=None,
            rated=False,
            timed_out=True,
            code=None,
            reason="Timed out",
            trunk="KF1",
        ),
        _out(
            "f5",
            "kpi-f",
            d2 + 18 * h,
            "busy",
            code=486,
            reason="Busy Here",
            billing=None,
            rate=None,
            charged=None,
            rated=False,
            trunk="KF1",
            destination="8881234568",
            flags=("account_mismatch", "no_rate"),
        ),
        _in(
            "fi1",
            "kpi-f",
            d1 + 16 * h,
            "answered",
            duration=30,
            did="18005559999",
            rated=False,
            flags=("unknown_did",),
        ),
        _in(
            "fi2",
            "kpi-f",
            d2 + 16 * h,
            "answered",
            duration=60,
            did="18005550102",
            destination="tel:+4930123999",
            toll_free=D("0.010000"),
            rated=False,
            flags=("no_rate",),
        ),
        _in(
            "fi3",
            "kpi-f",
            d2 + 17 * h,
            "answered",
            duration=12,
            did="18005550103",
            toll_free=D("0.005000"),
            flags=("account_mismatch",),
        ),
    ]
