"""Requests for a host the service is not reached as get 400, and no answer points at the
Host a client sent (no redirect built from it)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from pipeline.api.app import create_app
from tests.api.conftest import Env, auth


def test_a_foreign_host_gets_400(api):
    r = api.get("/healthz", headers={"Host": "evil.example"})
    assert r.status_code == 400 and r.json()["error"] == "bad_request"
    r = api.get("/call-logs", headers={"Host": "evil.example:8080"})
    assert r.status_code == 400


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1:8080", "[::1]:8080", "LOCALHOST"])
def test_local_names_are_accepted(api, host: str):
    assert api.get("/healthz", headers={"Host": host}).status_code == 200


def test_the_address_a_request_came_in_on_is_accepted(api):
    # TestClient's connections come in on "testserver", as a real one on its bind address
    assert api.get("/healthz").status_code == 200


def test_allowed_hosts_setting(env: Env, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CDRPIPE_API_ALLOWED_HOSTS", "cdr.example.net, Logs.Example.net:443")
    with TestClient(create_app(env.client, env.keys_path)) as c:
        assert c.get("/healthz", headers={"Host": "cdr.example.net"}).status_code == 200
        assert c.get("/healthz", headers={"Host": "logs.example.net"}).status_code == 200
        assert c.get("/healthz", headers={"Host": "evil.example"}).status_code == 400


def test_no_redirect_built_from_the_host_header(api, env: Env):
    # a trailing slash used to answer 307 with Location: http://<Host>/api/v1/cdrs
    for host in ("evil.example", "localhost"):
        r = api.get(
            "/api/v1/cdrs/",
            params={"direction": "outbound"},
            headers={**auth(env.keys["admin"]), "Host": host},
            follow_redirects=False,
        )
        assert "evil.example" not in r.headers.get("location", "")
        assert r.status_code in (400, 404)
    r = api.get("/", headers={"Host": "localhost"}, follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/call-logs"
