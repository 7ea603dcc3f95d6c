"""The re-rating summary counts CDRs as `FlagCounts` does, and its totals add the accounts up."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from types import SimpleNamespace

from pipeline.rerate import RerateSummary
from pipeline.store.queries import FlagCounts


def cdr(rated: bool, charged: str, *flags: str, timed_out: bool = False) -> SimpleNamespace:
    return SimpleNamespace(
        direction="outbound",
        rated=rated,
        timed_out=timed_out,
        flags=flags,
        charged=Decimal(charged),
    )


def test_accounts_count_flags_and_the_totals_add_them_up():
    summary = RerateSummary(datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC))
    a = summary.account("outbound", "a")
    a.add(cdr(False, "0", "no_rate"), cdr(True, "0.5"))
    a.add(cdr(False, "0", "unknown_trunk", timed_out=True), None)
    b = summary.account("outbound", "b")
    b.add(cdr(True, "1", "account_mismatch"), None)
    assert (a.count, a.changed, a.unrated_before, a.unrated_after) == (2, 1, 2, 1)
    assert a.before == FlagCounts(
        unrated=2, timed_out=1, no_rate=1, unknown_trunk=1, unrated_timed_out=1
    )
    assert a.after == FlagCounts(unrated=1, timed_out=1, unknown_trunk=1, unrated_timed_out=1)
    assert b.before == b.after == FlagCounts(account_mismatch=1)
    total = summary.render().splitlines()[-2].split()
    # direction, TOTAL, CDRs, changed, unrated before/after, charged before/after, difference
    assert total == ["outbound", "TOTAL", "3", "1", "2", "1", "1.000000", "1.500000", "0.500000"]
