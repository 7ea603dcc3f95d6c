"""Flags and the unrated state through the API: per CDR, as a filter, in totals, KPIs and
metrics, against the hand-listed calls of account kpi-f (tests/api/dataset.py):

  outbound  f1 account_mismatch, rated (charged 0.0123)   KF1         day 1
            f2 unknown_trunk, unrated                      KF-unknown  day 1
            f3 no_rate, unrated                            KF1         day 2
            f4 timed out, unrated                          KF1         day 2
            f5 account_mismatch + no_rate, unrated (busy)  KF1         day 2
  inbound   fi1 unknown_did, unrated (no amount known)
            fi2 no_rate: termination unrated, toll-free 0.01, metered not used
            fi3 account_mismatch, rated (toll-free 0.005)
"""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

import pytest
from prometheus_client import REGISTRY, generate_latest

from pipeline import metrics
from pipeline.core.engine import Outcome
from pipeline.store.queries import CdrFilter, Totals, select_cdrs, totals
from tests.api.conftest import Env, auth
from tests.api.dataset import days, flagged_cdrs
from tests.api.test_list import all_pages

OUT_MONEY = ["billing_duration", "rate", "charged"]
IN_MONEY = ["toll_free_amount", "termination_amount", "metered_amount"]

# id -> (flags, rated, timed_out, unrated_fields)
WANT = {
    "outbound": {
        "fx-f1": (["account_mismatch"], True, False, []),
        "fx-f2": (["unknown_trunk"], False, False, OUT_MONEY),
        "fx-f3": (["no_rate"], False, False, OUT_MONEY),
        "fx-f4": ([], False, True, OUT_MONEY),
        "fx-f5": (["account_mismatch", "no_rate"], False, False, OUT_MONEY),
    },
    "inbound": {
        "fx-fi1": (["unknown_did"], False, False, IN_MONEY),
        "fx-fi2": (["no_rate"], False, False, ["termination_amount"]),
        "fx-fi3": (["account_mismatch"], True, False, []),
    },
}


def items(api, env: Env, key: str = "kpi-f", **params) -> list[dict]:
    r = api.get("/api/v1/cdrs", headers=auth(env.keys[key]), params=env.params(**params))
    assert r.status_code == 200, r.text
    return r.json()["items"]


@pytest.mark.parametrize("direction", ["outbound", "inbound"])
def test_every_cdr_carries_its_flags(api, env: Env, direction):
    got = {
        c["id"]: (c["flags"], c["rated"], c["timed_out"], c["unrated_fields"])
        for c in items(api, env, direction=direction, limit=1000)
    }
    assert got == WANT[direction]


def test_unrated_and_unused_amounts_are_told_apart(api, env: Env):
    """fi2: its toll-free amount is rated, its termination could not be rated and it uses no
    metered channels. The CSV shows the last two alike (empty); the API does not."""
    (fi2,) = [c for c in items(api, env, direction="inbound") if c["id"] == "fx-fi2"]
    assert fi2["toll_free_amount"] == "0.010000"
    assert fi2["termination_amount"] is None and fi2["metered_amount"] is None
    assert "termination_amount" in fi2["unrated_fields"]
    assert "metered_amount" not in fi2["unrated_fields"]


CASES = [
    ("outbound", "account_mismatch", ["fx-f1", "fx-f5"]),
    ("outbound", "no_rate", ["fx-f3", "fx-f5"]),
    ("outbound", "unknown_trunk", ["fx-f2"]),
    ("outbound", "unknown_did", []),
    ("inbound", "unknown_did", ["fx-fi1"]),
    ("inbound", "no_rate", ["fx-fi2"]),
    ("inbound", "account_mismatch", ["fx-fi3"]),
]


@pytest.mark.parametrize(("direction", "flag", "ids"), CASES)
def test_filter_by_flag(api, env: Env, direction, flag, ids):
    got = items(api, env, direction=direction, flag=flag)
    assert [c["id"] for c in got] == ids
    csv_lines = api.get(
        "/api/v1/cdrs.csv",
        headers=auth(env.keys["kpi-f"]),
        params=env.params(direction=direction, flag=flag),
    ).content.splitlines()
    assert len(csv_lines) == 1 + len(ids)
    kpi = api.get(
        "/api/v1/kpis",
        headers=auth(env.keys["kpi-f"]),
        params=env.params(direction=direction, flag=flag),
    ).json()
    assert kpi["totals"]["attempts"] == len(ids)
    assert kpi["filter"]["flag"] == flag


@pytest.mark.parametrize("direction", ["outbound", "inbound"])
def test_flag_filter_over_all_accounts(api, env: Env, direction):
    """Across every account, the filter keeps exactly the CDRs that carry the flag."""
    every = all_pages(api, env.keys["admin"], env.params(direction=direction))
    flagged = all_pages(api, env.keys["admin"], env.params(direction=direction, flag="no_rate"))
    assert [c["id"] for c in flagged] == [c["id"] for c in every if "no_rate" in c["flags"]]
    assert flagged


@pytest.mark.parametrize("path", ["/api/v1/cdrs", "/api/v1/cdrs.csv", "/api/v1/kpis"])
@pytest.mark.parametrize("flag", ["bogus", "ACCOUNT_MISMATCH", "account_mismatch ", "rated"])
def test_unknown_flag_is_refused(api, env: Env, path, flag):
    r = api.get(
        path, headers=auth(env.keys["kpi-f"]), params=env.params(direction="outbound", flag=flag)
    )
    assert r.status_code == 400
    assert r.json()["error"] == "bad_request" and "flag" in r.json()["message"]


def test_store_reads_back_the_flags(env: Env):
    """select_cdrs gives each CDR as written: flags a tuple, as the model has them."""
    d1, d2 = days()
    for direction in ("outbound", "inbound"):
        written = [c for c in flagged_cdrs(d1, d2) if c.direction == direction]
        read = list(select_cdrs(env.client, CdrFilter(direction=direction, account="kpi-f")))
        assert read == written
        assert all(isinstance(c.flags, tuple) for c in read)


def test_store_filter_validates_the_flag():
    with pytest.raises(ValueError, match="flag"):
        CdrFilter(direction="outbound", flag="bogus")  # type: ignore[arg-type]
    assert CdrFilter.from_strings(direction="outbound", flag="no_rate").flag == "no_rate"
    assert CdrFilter.from_strings(direction="outbound", flag="").flag is None


def test_totals_count_flags_and_unrated_reasons(env: Env):
    out = totals(env.client, CdrFilter(direction="outbound", account="kpi-f"))
    assert out == Totals(
        count=5,
        unrated=4,
        timed_out=1,
        account_mismatch=2,
        unknown_trunk=1,
        unknown_did=0,
        no_rate=2,
        unrated_timed_out=1,
        charged=Decimal("0.012300"),
    )
    inb = totals(env.client, CdrFilter(direction="inbound", account="kpi-f"))
    assert inb == Totals(
        count=3,
        unrated=2,
        timed_out=0,
        account_mismatch=1,
        unknown_trunk=0,
        unknown_did=1,
        no_rate=1,
        unrated_timed_out=0,
        toll_free_amount=Decimal("0.015000"),
        termination_amount=Decimal(0),
        metered_amount=Decimal(0),
    )


def kpis(api, env: Env, **params) -> dict:
    r = api.get("/api/v1/kpis", headers=auth(env.keys["kpi-f"]), params=env.params(**params))
    assert r.status_code == 200, r.text
    return r.json()


FLAG_KPIS = ("unrated", "timed_out", "account_mismatch", "unknown_trunk", "unknown_did")
FLAG_KPIS += ("no_rate", "unrated_timed_out")


def counts(row: dict) -> tuple[int, ...]:
    return tuple(row[name] for name in FLAG_KPIS)


def test_kpis_count_flags(api, env: Env):
    t = kpis(api, env, direction="outbound")["totals"]
    assert counts(t) == (4, 1, 2, 1, 0, 2, 1)
    assert (t["attempts"], t["charged"]) == (5, "0.012300")
    by_trunk = {
        g["key"]: counts(g)
        for g in kpis(api, env, direction="outbound", group_by="trunk")["groups"]
    }
    assert by_trunk == {"KF1": (3, 1, 2, 0, 0, 2, 1), "KF-unknown": (1, 0, 0, 1, 0, 0, 0)}
    d1, d2 = days()
    by_day = {
        g["key"]: counts(g) for g in kpis(api, env, direction="outbound", group_by="day")["groups"]
    }
    assert by_day == {
        d1.date().isoformat(): (1, 0, 1, 1, 0, 0, 0),
        d2.date().isoformat(): (3, 1, 1, 0, 0, 2, 1),
    }
    t = kpis(api, env, direction="inbound")["totals"]
    assert counts(t) == (2, 0, 1, 0, 1, 1, 0)
    assert t["charged"] == "0.015000"


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_metrics_count_flags():
    """The workers' counters: one per flag (account_mismatch among them), next to unrated."""
    d1, d2 = days()
    cdrs = flagged_cdrs(d1, d2)
    names = ("account_mismatch", "unknown_trunk", "unknown_did", "no_rate")
    before = {flag: sample("cdrpipe_flagged_total", flag=flag) for flag in names}
    unrated = sample("cdrpipe_unrated_total")
    metrics.record_products(Outcome(cdrs=cdrs, dead=[]))
    # a corrected version of f1 is counted again, like every emitted CDR version
    metrics.record_products(Outcome(cdrs=[replace(cdrs[0], revision=2)], dead=[]))
    after = {flag: sample("cdrpipe_flagged_total", flag=flag) for flag in names}
    delta = {flag: after[flag] - before[flag] for flag in names}
    assert delta == {"account_mismatch": 4, "unknown_trunk": 1, "unknown_did": 1, "no_rate": 3}
    assert sample("cdrpipe_unrated_total") - unrated == 6


def test_every_flag_is_exported_before_it_happens():
    """Each flag's series exists from the start (at 0), so alerts and rate() see it."""
    text = generate_latest(REGISTRY).decode()
    for flag in ("account_mismatch", "unknown_trunk", "unknown_did", "no_rate"):
        assert f'cdrpipe_flagged_total{{flag="{flag}"}}' in text
