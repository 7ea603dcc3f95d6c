"""The access log names routes, never query values: a key sent as ``?api_key=`` (refused) and
the phone numbers of filters stay out of it. Checked on a real `cdrpipe serve` process (its
stdout and stderr, where uvicorn's own access log used to write the full request target) and
on the app's logger."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import Env, auth
from tests.api.test_timeouts import start_serve

SECRET = "cdrp_SECRETkey0123456789"
PHONE = "4915123456789"


def test_serve_logs_neither_keys_nor_filter_values(tmp_path: Path):
    served = start_serve(tmp_path, log_level="info")
    try:
        params = {"api_key": SECRET, "source": PHONE, "direction": "outbound"}
        r = httpx.get(f"{served.base}/api/v1/cdrs", params=params, timeout=10)
        assert r.status_code == 401
        r = httpx.get(
            f"{served.base}/api/v1/cdrs",
            params={"direction": "outbound", "source": PHONE, "destination": PHONE},
            headers={"X-API-Key": served.key},
            timeout=10,
        )
        assert r.status_code == 200
    finally:
        out, err = served.stop()
    log = out + err
    assert SECRET not in log and PHONE not in log
    assert "GET /api/v1/cdrs 401" in log and "GET /api/v1/cdrs 200" in log


def test_app_logs_route_template_status_and_duration(
    api, env: Env, caplog: pytest.LogCaptureFixture
):
    with caplog.at_level(logging.INFO, logger="pipeline.api.access"):
        api.get(
            "/api/v1/cdrs",
            params={"api_key": SECRET, "source": PHONE, "direction": "outbound"},
        )
        api.get(
            "/api/v1/cdrs.csv",
            params=env.params(direction="inbound", source=PHONE),
            headers=auth(env.keys["kpi-a"]),
        )
        api.get(f"/no/such/{PHONE}")
        api.get("/static/call-logs.css")
    lines = [r.getMessage() for r in caplog.records if r.name == "pipeline.api.access"]
    assert len(lines) == 4
    assert all(SECRET not in line and PHONE not in line for line in lines)
    assert lines[0].startswith("GET /api/v1/cdrs 401 ") and lines[0].endswith("ms")
    assert lines[1].startswith("GET /api/v1/cdrs.csv 200 ")
    assert lines[2].startswith("GET - 404 ")
    assert lines[3].startswith("GET /static/{path} 200 ")
