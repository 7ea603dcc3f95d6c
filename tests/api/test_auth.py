"""API keys: 401 without a valid key, 403 for another account, scoping in the query, and the
keys file (hashed, reloaded on change, managed by `apikey create|list|revoke`)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from pipeline.api.app import create_app
from pipeline.api.auth import KeyStore, create_key, hash_key
from pipeline.api.cli import main as api_cli
from tests.api.conftest import Env, auth

ENDPOINTS = ["/api/v1/cdrs", "/api/v1/cdrs.csv", "/api/v1/kpis"]


@pytest.mark.parametrize("path", [*ENDPOINTS, "/api/v1/me"])
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-API-Key": ""},
        {"X-API-Key": "cdrp_not-a-key"},
        {"Authorization": "Bearer cdrp_not-a-key"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"X-API-Key": "x" * 10_000},
        {"X-API-Key": "' OR 1=1 --"},
    ],
    ids=["none", "empty", "unknown", "bearer-unknown", "basic", "huge", "sql"],
)
def test_no_valid_key_is_401(api, env: Env, path, headers):
    r = api.get(path, params=env.params(direction="outbound"), headers=headers)
    assert r.status_code == 401
    assert r.json()["error"] == "unauthorized"
    assert r.headers["www-authenticate"] == "Bearer"


def test_key_in_header_or_bearer(api, env: Env):
    key = env.keys["kpi-a"]
    a = api.get("/api/v1/me", headers={"X-API-Key": key})
    b = api.get("/api/v1/me", headers={"Authorization": f"Bearer {key}"})
    assert a.status_code == b.status_code == 200
    assert a.json() == b.json()
    assert a.json()["account"] == "kpi-a" and a.json()["admin"] is False
    admin = api.get("/api/v1/me", headers=auth(env.keys["admin"])).json()
    assert admin["admin"] is True and admin["account"] is None


def test_key_with_non_ascii_bytes_is_401(api):
    r = api.get("/api/v1/me", headers=[(b"x-api-key", "ключ☎".encode())])
    assert r.status_code == 401


@pytest.mark.parametrize("path", ENDPOINTS)
def test_other_account_is_403(api, env: Env, path):
    r = api.get(
        path,
        headers=auth(env.keys["kpi-a"]),
        params=env.params(direction="outbound", account="kpi-b"),
    )
    assert r.status_code == 403
    assert r.json()["error"] == "forbidden"
    assert "kpi-b" not in r.text
    # naming its own account is fine
    r = api.get(
        path,
        headers=auth(env.keys["kpi-a"]),
        params=env.params(direction="outbound", account="kpi-a"),
    )
    assert r.status_code == 200


@pytest.mark.parametrize("direction", ["outbound", "inbound"])
def test_account_key_sees_only_its_account(api, env: Env, direction):
    r = api.get(
        "/api/v1/cdrs",
        headers=auth(env.keys["kpi-a"]),
        params=env.params(direction=direction, limit=1000),
    )
    items = r.json()["items"]
    assert items and {c["account"] for c in items} == {"kpi-a"}
    csv_text = api.get(
        "/api/v1/cdrs.csv", headers=auth(env.keys["kpi-a"]), params=env.params(direction=direction)
    ).text
    assert len(csv_text.splitlines()) == len(items) + 1
    k = api.get(
        "/api/v1/kpis", headers=auth(env.keys["kpi-a"]), params=env.params(direction=direction)
    ).json()
    assert k["totals"]["attempts"] == len(items)
    assert k["filter"]["account"] == "kpi-a"


def test_admin_sees_every_account(api, env: Env):
    r = api.get(
        "/api/v1/kpis",
        headers=auth(env.keys["admin"]),
        params=env.params(direction="outbound", group_by="trunk"),
    )
    trunks = {g["key"] for g in r.json()["groups"]}
    assert {"KT1", "KT2", "KB1", "Outbound Trunk 1"} <= trunks
    r = api.get(
        "/api/v1/cdrs",
        headers=auth(env.keys["admin"]),
        params=env.params(direction="outbound", account="kpi-b"),
    )
    assert {c["id"] for c in r.json()["items"]} == {"fx-b1", "fx-b2"}


def test_scope_is_in_the_sql(env: Env, monkeypatch):
    """The account travels into the WHERE clause as a parameter: spy on the queries."""
    seen: list[tuple[str, dict]] = []
    real_query = type(env.client).query
    real_stream = type(env.client).query_row_block_stream

    def spy_query(self, query=None, parameters=None, *a, **kw):
        seen.append((query, dict(parameters or {})))
        return real_query(self, query, parameters, *a, **kw)

    def spy_stream(self, query, parameters=None, *a, **kw):
        seen.append((query, dict(parameters or {})))
        return real_stream(self, query, parameters, *a, **kw)

    monkeypatch.setattr(type(env.client), "query", spy_query)
    monkeypatch.setattr(type(env.client), "query_row_block_stream", spy_stream)
    with TestClient(create_app(env.client, env.keys_path)) as api:
        for path in ENDPOINTS:
            assert (
                api.get(
                    path, headers=auth(env.keys["kpi-a"]), params=env.params(direction="outbound")
                ).status_code
                == 200
            )
    assert len(seen) >= 3
    for sql, params in seen:
        assert "account = {account:String}" in sql
        assert params["account"] == "kpi-a"


def test_keys_file_holds_hashes_only(env: Env):
    text = env.keys_path.read_text()
    data = json.loads(text)
    for key in env.keys.values():
        assert key not in text
        assert hash_key(key) in {k["sha256"] for k in data["keys"]}
    assert stat.S_IMODE(env.keys_path.stat().st_mode) == 0o600


def test_keys_are_reloaded_when_the_file_changes(env: Env, tmp_path: Path):
    path = tmp_path / "keys.json"
    first, _ = create_key(path, account="kpi-a")
    with TestClient(create_app(env.client, path)) as api:
        assert api.get("/api/v1/me", headers=auth(first)).status_code == 200
        second, entry = create_key(path, account="kpi-b")
        assert api.get("/api/v1/me", headers=auth(second)).json()["account"] == "kpi-b"
        assert api_cli(["apikey", "--keys", str(path), "revoke", entry.id]) == 0
        assert api.get("/api/v1/me", headers=auth(second)).status_code == 401
        # a broken file keeps the last good keys in force
        path.write_text("{not json")
        assert api.get("/api/v1/me", headers=auth(first)).status_code == 200


def test_bad_keys_file_is_refused_at_start(tmp_path: Path):
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": [{"id": "k1", "sha256": "zz", "admin": False}]}))
    with pytest.raises(Exception, match="sha256"):
        KeyStore(path)
    path.write_text(json.dumps({"keys": [{"id": "k1", "sha256": "a" * 64}]}))
    with pytest.raises(Exception, match="account"):
        KeyStore(path)


def test_apikey_cli(tmp_path: Path, capsys):
    path = tmp_path / "k.json"
    assert (
        api_cli(["apikey", "--keys", str(path), "create", "--account", "acc-7", "--label", "ops"])
        == 0
    )
    key = capsys.readouterr().out.strip()
    assert key.startswith("cdrp_") and len(key) > 40
    assert api_cli(["apikey", "create", "--admin", "--keys", str(path)]) == 0
    capsys.readouterr()
    assert api_cli(["apikey", "list", "--keys", str(path)]) == 0
    listing = capsys.readouterr().out
    assert "account=acc-7" in listing and "admin" in listing and key not in listing
    store = KeyStore(path)
    principal = store.authenticate(key)
    assert principal is not None and principal.account == "acc-7" and not principal.admin
    assert api_cli(["apikey", "--keys", str(path), "revoke", "k_nope"]) == 1
    with pytest.raises(SystemExit):  # exactly one of --account / --admin
        api_cli(["apikey", "--keys", str(path), "create", "--account", "a", "--admin"])
    assert api_cli(["apikey", "--keys", str(path), "create", "--account", " "]) == 2


def test_env_variable_names_the_keys_file(tmp_path: Path, monkeypatch, capsys):
    path = tmp_path / "env-keys.json"
    monkeypatch.setenv("CDRPIPE_API_KEYS", str(path))
    assert api_cli(["apikey", "create", "--admin"]) == 0
    assert path.exists()
    assert KeyStore(path).authenticate(capsys.readouterr().out.strip()) is not None
