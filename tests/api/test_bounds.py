"""Bad requests: clear 400 JSON errors for values, ranges, page sizes and cursors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.api.conftest import Env, auth

NOW = datetime.now(UTC).replace(microsecond=0)


def iso(value: datetime) -> str:
    return value.isoformat()


BAD = [
    ({"direction": None}, "direction"),
    ({"direction": "sideways"}, "direction"),
    ({"direction": "OUTBOUND"}, "direction"),
    ({"from": "yesterday"}, "from must be an ISO date"),
    ({"to": "2024-13-01"}, "to must be an ISO date"),
    ({"from": "0001-01-01T00:00:00+01:00"}, "between 2000 and 2100"),
    ({"to": "9999-12-31T23:59:59-01:00"}, "between 2000 and 2100"),
    ({"from": "1999-12-31", "to": "2000-01-02"}, "between 2000 and 2100"),
    ({"from": "2150-01-01"}, "between 2000 and 2100"),
    ({"from": iso(NOW), "to": iso(NOW)}, "must be before"),
    ({"from": iso(NOW), "to": iso(NOW - timedelta(days=1))}, "before"),
    ({"from": iso(NOW - timedelta(days=63)), "to": iso(NOW)}, "at most 62 days"),
    ({"from": iso(NOW - timedelta(days=90))}, "at most 62 days"),
    ({"type": "international"}, "type"),
    ({"type": ""}, "type"),
    ({"status": "ANSWERED"}, "status"),
    ({"rated": "maybe"}, "rated"),
    ({"source": "1" * 257}, "source"),
    ({"account": "a" * 300}, "account"),
    ({"destination": "4" * 60_000}, "destination"),
    ({"from": "2" * 65}, "from"),
]


@pytest.mark.parametrize("path", ["/api/v1/cdrs", "/api/v1/cdrs.csv", "/api/v1/kpis"])
@pytest.mark.parametrize(("params", "says"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_filters_are_400(api, env: Env, path, params, says):
    query = {"direction": "outbound", **params}
    query = {k: v for k, v in query.items() if v is not None}
    r = api.get(path, params=query, headers=auth(env.keys["admin"]))
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["error"] == "bad_request"
    assert says in body["message"]


@pytest.mark.parametrize("limit", ["0", "-1", "1001", "1e3", "ten", ""])
def test_page_size_bounds(api, env: Env, limit):
    r = api.get(
        "/api/v1/cdrs",
        params=env.params(direction="outbound", limit=limit),
        headers=auth(env.keys["admin"]),
    )
    assert r.status_code == 400
    assert "limit" in r.json()["message"]


@pytest.mark.parametrize("limit", ["1", "1000"])
def test_page_size_edges_are_fine(api, env: Env, limit):
    r = api.get(
        "/api/v1/cdrs",
        params=env.params(direction="outbound", limit=limit),
        headers=auth(env.keys["admin"]),
    )
    assert r.status_code == 200
    assert len(r.json()["items"]) == int(limit)


def test_exactly_62_days_is_fine(api, env: Env):
    r = api.get(
        "/api/v1/kpis",
        headers=auth(env.keys["admin"]),
        params={"direction": "outbound", "from": iso(NOW - timedelta(days=62)), "to": iso(NOW)},
    )
    assert r.status_code == 200


@pytest.mark.parametrize(
    "cursor",
    [
        "nope",
        "!!!!",
        "MTIz",
        "YWJj",
        "MTIzNDU2Nzg5MC4=",
        "LTEuYWJj",
        "x" * 513,
        "OTk5OTk5OTk5OTk5OTk5OTk5OTk5LmE",
        "Y3Vyc29y☎",
        "' OR 1=1 --",
    ],
)
def test_bad_cursor_is_400(api, env: Env, cursor):
    r = api.get(
        "/api/v1/cdrs",
        params=env.params(direction="outbound", cursor=cursor),
        headers=auth(env.keys["admin"]),
    )
    assert r.status_code == 400
    assert "cursor" in r.json()["message"]


def test_bad_group_by_is_400(api, env: Env):
    r = api.get(
        "/api/v1/kpis",
        params=env.params(direction="outbound", group_by="account"),
        headers=auth(env.keys["admin"]),
    )
    assert r.status_code == 400 and "group_by" in r.json()["message"]


def test_unknown_path_and_method(api, env: Env):
    r = api.get("/api/v1/nothing", headers=auth(env.keys["admin"]))
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    r = api.post("/api/v1/cdrs", headers=auth(env.keys["admin"]))
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"


def test_auth_is_checked_before_bounds(api, env: Env):
    """Without a key, nothing about the request is judged: 401 even for bad values."""
    r = api.get("/api/v1/cdrs", params={"direction": "outbound", "limit": "0"})
    assert r.status_code == 401
    r = api.get("/api/v1/cdrs", params={"direction": "outbound", "from": "x"})
    assert r.status_code == 401
