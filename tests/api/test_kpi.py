"""GET /api/v1/kpis against numbers worked out by hand from tests/api/dataset.py.

kpi-a outbound (o1..o10):
  o1 answered 61 s billed 120 charged 0.0246   KT1 UK       International  day 1
  o2 answered 30 s billed 30  charged 0.01     KT1 US       Local          day 1
  o3 busy 486                                  KT2 UK       International  day 1
  o4 no-answer 480                             KT2 Germany  Origin based   day 1
  o5 failed 603 (counts for NER)               KT1 UK       International  day 2
  o6 failed 503                                KT1 UK       International  day 2
  o7 cancelled 487                             KT2 Germany  Origin based   day 2
  o8 answered 10 s unrated (no billing/charge) KT2 France   International  day 2
  o9 failed, timed out (no code)               KT1 UK       International  day 2
  o10 answered 125 s billed 180 charged 0.15   KT1 UK       International  day 2
"""

from __future__ import annotations

from collections import Counter
from dataclasses import fields

import pytest

from pipeline.api.kpi import kpis
from pipeline.store.queries import CdrFilter, FlagCounts, select_cdrs, totals
from tests.api.conftest import Env, auth
from tests.api.dataset import days


def row(
    key,
    attempts,
    answered,
    asr,
    acd,
    ner,
    seconds,
    minutes,
    billed,
    billed_min,
    charged,
    unrated,
    timed_out,
) -> dict:
    return {
        "key": key,
        "attempts": attempts,
        "answered": answered,
        "asr_pct": asr,
        "acd_s": acd,
        "ner_pct": ner,
        "seconds": seconds,
        "minutes": minutes,
        "billed_seconds": billed,
        "billed_minutes": billed_min,
        "charged": charged,
        "unrated": unrated,
        "timed_out": timed_out,
        # kpi-a has no flagged calls (o8 is unrated for no recorded reason, o9 timed out but
        # billed); tests/api/test_flags.py counts those of kpi-f
        **dict.fromkeys(
            ("account_mismatch", "unknown_trunk", "unknown_did", "no_rate", "unrated_timed_out"),
            0,
        ),
    }


# answered 4 of 10; NER (4 answered + busy + no-answer + 603) = 7; 226 s over 4 answered
TOTAL = row("", 10, 4, 40.0, 56.5, 70.0, 226, 3.77, 330, 5.5, "0.184600", 1, 1)
BY_DAY = [
    # o1..o4: 2/4 answered, all 4 delivered, 91 s, 150 billed
    (0, row(None, 4, 2, 50.0, 45.5, 100.0, 91, 1.52, 150, 2.5, "0.034600", 0, 0)),
    # o5..o10: 2/6 answered (33.33), delivered o5 o8 o10 = 3, 135 s, 180 billed
    (1, row(None, 6, 2, 33.33, 67.5, 50.0, 135, 2.25, 180, 3.0, "0.150000", 1, 1)),
]
BY_TRUNK = [
    # busiest first: KT1 = o1 o2 o5 o6 o9 o10; delivered o1 o2 o10 o5 = 4 -> 66.67
    row("KT1", 6, 3, 50.0, 72.0, 66.67, 216, 3.6, 330, 5.5, "0.184600", 0, 1),
    # KT2 = o3 o4 o7 o8; delivered o3 o4 o8 = 3
    row("KT2", 4, 1, 25.0, 10.0, 75.0, 10, 0.17, 0, 0.0, "0.000000", 1, 0),
]
BY_TYPE = [
    # International = o1 o3 o5 o6 o8 o9 o10: 3/7 = 42.857 -> 42.86; delivered o1 o3 o5 o8 o10
    # = 5/7 -> 71.43; 196 s / 3 = 65.33 -> 65.3
    row("International", 7, 3, 42.86, 65.3, 71.43, 196, 3.27, 300, 5.0, "0.174600", 1, 1),
    row("Origin based", 2, 0, 0.0, None, 50.0, 0, 0.0, 0, 0.0, "0.000000", 0, 0),
    row("Local", 1, 1, 100.0, 30.0, 100.0, 30, 0.5, 30, 0.5, "0.010000", 0, 0),
]
BY_COUNTRY = {
    "United Kingdom": (6, 2, "0.174600"),  # o1 o3 o5 o6 o9 o10
    "Germany": (2, 0, "0.000000"),
    "United States": (1, 1, "0.010000"),
    "France": (1, 1, "0.000000"),
}


def get(api, env: Env, key: str = "kpi-a", **params) -> dict:
    r = api.get("/api/v1/kpis", headers=auth(env.keys[key]), params=env.params(**params))
    assert r.status_code == 200, r.text
    return r.json()


def test_totals(api, env: Env):
    body = get(api, env, direction="outbound")
    assert body["totals"] == TOTAL
    assert body["groups"] == [] and body["group_by"] == "none"


def test_by_day(api, env: Env):
    body = get(api, env, direction="outbound", group_by="day")
    d1, d2 = days()
    want = [{**r, "key": (d1, d2)[i].date().isoformat()} for i, r in BY_DAY]
    assert body["groups"] == want
    assert body["totals"] == TOTAL and body["truncated"] is False


def test_by_hour(api, env: Env):
    body = get(api, env, direction="outbound", group_by="hour")
    d1, _ = days()
    assert len(body["groups"]) == 10
    assert body["groups"][0]["key"] == f"{d1.date().isoformat()} 10:00"
    assert body["groups"][0]["attempts"] == 1 and body["groups"][0]["charged"] == "0.024600"


def test_by_trunk(api, env: Env):
    assert get(api, env, direction="outbound", group_by="trunk")["groups"] == BY_TRUNK


def test_by_cdr_type(api, env: Env):
    assert get(api, env, direction="outbound", group_by="cdr_type")["groups"] == BY_TYPE


def test_by_country(api, env: Env):
    groups = get(api, env, direction="outbound", group_by="country")["groups"]
    got = {g["key"]: (g["attempts"], g["answered"], g["charged"]) for g in groups}
    assert got == BY_COUNTRY
    assert groups[0]["key"] == "United Kingdom"


def test_filters_apply_to_kpis(api, env: Env):
    body = get(api, env, direction="outbound", status="answered")
    t = body["totals"]
    assert (t["attempts"], t["answered"], t["asr_pct"], t["ner_pct"]) == (4, 4, 100.0, 100.0)
    assert (t["seconds"], t["acd_s"], t["charged"], t["unrated"]) == (226, 56.5, "0.184600", 1)
    t = get(api, env, direction="outbound", source="12025550111")["totals"]
    assert (t["attempts"], t["charged"]) == (1, "0.150000")
    t = get(api, env, direction="outbound", timed_out="true")["totals"]
    assert (t["attempts"], t["timed_out"], t["asr_pct"]) == (1, 1, 0.0)


def test_inbound(api, env: Env):
    # i1 answered 45 s (0.01875 toll-free + 0.003 metered), i2 busy, i3 answered 100 s
    # (0.041667 toll-free + 0.01 termination): charged 0.073417; no billing duration inbound
    t = get(api, env, direction="inbound")["totals"]
    assert t == row("", 3, 2, 66.67, 72.5, 100.0, 145, 2.42, None, None, "0.073417", 0, 0)


def test_empty_selection(api, env: Env):
    body = get(
        api, env, direction="outbound", status="answered", type="Origin based", group_by="day"
    )
    assert body["groups"] == []
    assert body["totals"] == row("", 0, 0, None, None, None, 0, 0.0, 0, 0.0, "0.000000", 0, 0)


def test_other_accounts_are_not_counted(api, env: Env):
    """kpi-b's big call (charged 9.999999) shows for kpi-b and admin, never for kpi-a."""
    b = get(api, env, key="kpi-b", direction="outbound")["totals"]
    assert (b["attempts"], b["charged"]) == (2, "9.999999")
    admin = get(api, env, key="admin", direction="outbound", account="kpi-b")["totals"]
    assert admin == b


@pytest.mark.parametrize("group_by", ["none", "day", "trunk", "country", "cdr_type", "hour"])
def test_groups_add_up_to_totals(env: Env, group_by):
    """Over real (simulated) traffic every group_by gives the same totals."""
    d1, _ = days()
    flt = CdrFilter(
        direction="outbound", time_from=env.window[0], time_to=env.window[1], account="acc-1002"
    )
    report = kpis(env.client, flt, group_by)
    reference = kpis(env.client, flt, "none").totals
    assert report.totals == reference
    assert reference.attempts > 100
    if group_by != "none":
        assert sum(g.attempts for g in report.groups) == reference.attempts
        assert sum(g.charged for g in report.groups) == reference.charged


def _counts(row: FlagCounts) -> dict[str, int]:
    return {f.name: getattr(row, f.name) for f in fields(FlagCounts)}


@pytest.mark.parametrize("direction", ["outbound", "inbound"])
@pytest.mark.parametrize("account", ["kpi-f", "kpi-a", "acc-1002"])
def test_flag_counts_agree_in_sql_and_python(env: Env, direction, account):
    """`FlagCounts` counts the same in a query (`totals`, the KPIs) as over the CDRs read back
    (`FlagCounts.tally`, as the re-rating summary counts), and the KPI groups' counts add up."""
    flt = CdrFilter(direction=direction, account=account)
    read = FlagCounts.tally(Counter(map(FlagCounts.kind, select_cdrs(env.client, flt))))
    assert _counts(totals(env.client, flt)) == _counts(read)
    assert _counts(kpis(env.client, flt).totals) == _counts(read)
    groups = kpis(env.client, flt, "trunk").groups
    assert _counts(sum(groups, FlagCounts())) == _counts(read)
    if account == "kpi-f":
        assert read.account_mismatch and read.unrated  # the flagged calls are counted
