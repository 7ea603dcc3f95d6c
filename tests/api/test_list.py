"""GET /api/v1/cdrs: every filter, keyset pagination, bounds, and the JSON shape of a CDR."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from pipeline.api.models import cdr_out
from pipeline.api.store_access import encode_cursor
from pipeline.store.queries import CdrFilter, select_cdrs
from pipeline.store.writer import CdrWriter
from tests.api.conftest import BULK_DAYS, Env, auth
from tests.api.dataset import fixed_cdrs


def all_pages(api, key: str, params: dict, limit: int = 1000) -> list[dict]:
    items: list[dict] = []
    cursor = None
    for _ in range(10_000):
        page_params = {**params, "limit": limit, **({"cursor": cursor} if cursor else {})}
        r = api.get("/api/v1/cdrs", params=page_params, headers=auth(key))
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["items"]) <= limit
        items += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            return items
        assert len(body["items"]) == limit
    raise AssertionError("pagination did not end")


def expected(env: Env, **kw) -> list[str]:
    flt = CdrFilter(time_from=env.window[0], time_to=env.window[1], **kw)
    return [c.id for c in select_cdrs(env.client, flt)]


# Filters given to the API -> the same filter as CdrFilter keyword arguments.
CASES = [
    ({"direction": "outbound"}, {"direction": "outbound"}),
    ({"direction": "inbound"}, {"direction": "inbound"}),
    (
        {"direction": "outbound", "account": "acc-1002"},
        {"direction": "outbound", "account": "acc-1002"},
    ),
    ({"direction": "outbound", "source": "44"}, {"direction": "outbound", "source": "44"}),
    (
        {"direction": "outbound", "destination": "49"},
        {"direction": "outbound", "destination": "49"},
    ),
    (
        {"direction": "inbound", "destination": "1800"},
        {"direction": "inbound", "destination": "1800"},
    ),
    (
        {"direction": "inbound", "destination": "sip:"},
        {"direction": "inbound", "destination": "sip:"},
    ),
    ({"direction": "outbound", "type": "Local"}, {"direction": "outbound", "cdr_type": "Local"}),
    (
        {"direction": "outbound", "type": "Origin based"},
        {"direction": "outbound", "cdr_type": "Origin based"},
    ),
    (
        {"direction": "inbound", "type": "International"},
        {"direction": "inbound", "cdr_type": "International"},
    ),
    *[
        ({"direction": d, "status": s}, {"direction": d, "status": s})
        for d in ("outbound", "inbound")
        for s in ("answered", "busy", "no-answer", "cancelled", "failed")
    ],
    ({"direction": "outbound", "rated": "false"}, {"direction": "outbound", "rated": False}),
    ({"direction": "outbound", "timed_out": "true"}, {"direction": "outbound", "timed_out": True}),
    (
        {
            "direction": "outbound",
            "account": "acc-1001",
            "status": "answered",
            "type": "Local",
            "source": "1",
        },
        {
            "direction": "outbound",
            "account": "acc-1001",
            "status": "answered",
            "cdr_type": "Local",
            "source": "1",
        },
    ),
]


@pytest.mark.parametrize(("query", "flt"), CASES, ids=lambda v: str(v))
def test_every_filter_matches_the_store(api, env: Env, query, flt):
    want = expected(env, **flt)
    got = all_pages(api, env.keys["admin"], env.params(**query))
    assert [c["id"] for c in got] == want
    if query.get("status"):
        assert {c["status"] for c in got} <= {query["status"]}


def test_filters_select_something(env: Env):
    """Guard against vacuous filter tests: each case above matches rows (timed-out calls and
    unrated calls exist, every status exists in both directions)."""
    empty = [q for q, f in CASES if not expected(env, **f)]
    assert empty == []


def test_date_range_is_inclusive_from_exclusive_to(api, env: Env):
    rows = list(select_cdrs(env.client, CdrFilter(direction="outbound", account="kpi-a")))
    pivot = rows[3].start_time
    params = {"direction": "outbound", "account": "kpi-a", "limit": 1000}
    before = api.get(
        "/api/v1/cdrs",
        headers=auth(env.keys["admin"]),
        params={**params, "from": (pivot - timedelta(days=1)).isoformat(), "to": pivot.isoformat()},
    ).json()["items"]
    after = api.get(
        "/api/v1/cdrs",
        headers=auth(env.keys["admin"]),
        params={**params, "from": pivot.isoformat(), "to": (pivot + timedelta(days=5)).isoformat()},
    ).json()["items"]
    assert pivot.isoformat().replace("+00:00", "Z") == after[0]["start_time"]
    assert [c["id"] for c in before + after][-len(rows) :] == [c.id for c in rows]


def test_times_accept_offsets_and_plain_dates(api, env: Env):
    key = auth(env.keys["kpi-a"])
    d1 = (datetime.now(UTC) - timedelta(days=2)).date()
    a = api.get(
        "/api/v1/cdrs",
        headers=key,
        params={
            "direction": "outbound",
            "from": d1.isoformat(),
            "to": (d1 + timedelta(days=1)).isoformat(),
        },
    )
    b = api.get(
        "/api/v1/cdrs",
        headers=key,
        params={
            "direction": "outbound",
            "from": f"{d1.isoformat()}T02:00:00+02:00",
            "to": f"{(d1 + timedelta(days=1)).isoformat()} 00:00",
        },
    )
    assert a.status_code == b.status_code == 200
    assert [c["id"] for c in a.json()["items"]] == ["fx-o1", "fx-o2", "fx-o3", "fx-o4"]
    assert a.json()["items"] == b.json()["items"]
    assert a.json()["filter"]["from"] == f"{d1.isoformat()}T00:00:00Z"


def test_default_range_is_the_last_62_days(api, env: Env):
    r = api.get(
        "/api/v1/cdrs",
        headers=auth(env.keys["kpi-a"]),
        params={"direction": "outbound", "limit": 1000},
    )
    body = r.json()
    assert r.status_code == 200
    assert [c["id"] for c in body["items"]][:2] == ["fx-o1", "fx-o2"]
    f = body["filter"]
    span = datetime.fromisoformat(f["to"]) - datetime.fromisoformat(f["from"])
    assert span == timedelta(days=62)
    assert f["account"] == "kpi-a"


def test_cdr_json_shape(api, env: Env):
    r = api.get(
        "/api/v1/cdrs",
        headers=auth(env.keys["kpi-a"]),
        params=env.params(direction="outbound", limit=1000),
    )
    items = {c["id"]: c for c in r.json()["items"]}
    o1 = items["fx-o1"]
    assert o1["charged"] == "0.024600" and o1["rate"] == "0.0123"
    assert o1["billing_duration"] == 120 and o1["duration"] == 61
    assert o1["start_time"].endswith("T10:00:00Z") and o1["connect_time"].endswith("T10:00:03Z")
    assert o1["did"] is None and o1["toll_free_amount"] is None
    assert items["fx-o8"]["charged"] is None and items["fx-o8"]["rated"] is False
    assert items["fx-o9"]["disconnect_code"] is None and items["fx-o9"]["timed_out"] is True
    # the whole object is the model's rendering of the stored CDR
    stored = {
        c.id: c for c in select_cdrs(env.client, CdrFilter(direction="outbound", account="kpi-a"))
    }
    assert o1 == cdr_out(stored["fx-o1"]).model_dump()


def test_keyset_pages_are_contiguous_and_stable(api, env: Env):
    """Small pages over a filter walk exactly the rows of one big select, in order."""
    want = expected(env, direction="outbound", account="acc-1001")
    assert len(want) > 300
    got = all_pages(api, env.keys["acc-1001"], env.params(direction="outbound"), limit=97)
    assert [c["id"] for c in got] == want


def test_deep_pages_stay_fast(api, env: Env):
    """A page 190,000 rows deep into 200,000 costs about what the first page costs: the cursor
    is a keyset (start_time, id), not an OFFSET, and pages read narrow time windows."""
    now = datetime.now(UTC)
    flt = CdrFilter(
        direction="outbound",
        account="bulk",
        time_from=now - timedelta(days=BULK_DAYS + 1),
        time_to=now,
    )
    ids = []
    deep_after = None
    for i, cdr in enumerate(select_cdrs(env.client, flt)):
        if i == 189_999:
            deep_after = cdr
        if i >= 189_999:
            ids.append(cdr.id)
    assert deep_after is not None

    params = {
        "direction": "outbound",
        "from": flt.time_from.isoformat(),
        "to": flt.time_to.isoformat(),
        "limit": 1000,
    }
    key = auth(env.keys["admin"])

    def timed(**extra) -> tuple[float, dict]:
        best, body = 1e9, {}
        for _ in range(3):
            t0 = time.perf_counter()
            r = api.get("/api/v1/cdrs", headers=key, params={**params, "account": "bulk", **extra})
            best = min(best, time.perf_counter() - t0)
            assert r.status_code == 200
            body = r.json()
        return best, body

    first, _ = timed()
    deep, body = timed(cursor=encode_cursor(deep_after.start_time, deep_after.id))
    assert [c["id"] for c in body["items"]] == ids[1:1001]
    assert deep < max(0.5, 3 * first), (first, deep)


def test_last_page_has_no_cursor(api, env: Env):
    r = api.get(
        "/api/v1/cdrs",
        headers=auth(env.keys["kpi-a"]),
        params=env.params(direction="outbound", limit=10),
    )
    assert r.json()["next_cursor"] is None and len(r.json()["items"]) == 10
    r = api.get(
        "/api/v1/cdrs",
        headers=auth(env.keys["kpi-a"]),
        params=env.params(direction="outbound", limit=9),
    )
    assert r.json()["next_cursor"] is not None


def test_only_two_months_exist(api, env: Env):
    """Rows older than the retention are hidden even before the TTL merge drops them."""
    old = replace(fixed_cdrs()[0], id="fx-old", start_time=datetime.now(UTC) - timedelta(days=70))
    CdrWriter(env.client).write([old])
    r = api.get(
        "/api/v1/cdrs",
        headers=auth(env.keys["kpi-a"]),
        params={
            "direction": "outbound",
            "from": (datetime.now(UTC) - timedelta(days=80)).isoformat(),
            "to": (datetime.now(UTC) - timedelta(days=60)).isoformat(),
        },
    )
    assert r.status_code == 200 and r.json()["items"] == []
