"""`serve` and `apikey` on the command line, and a real `serve` process over HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from pipeline.api.auth import create_key
from pipeline.api.cli import cmd_apikey, cmd_serve
from pipeline.cli import build_parser
from tests.api.test_browser import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_parsers_fit_into_cdrpipe():
    parser = build_parser()  # pipeline/cli.py wires add_serve_parser and add_keys_parser
    args = parser.parse_args(["serve"])
    assert (args.host, args.port, args.keys, args.store) == ("127.0.0.1", 8080, None, None)
    assert args.func is cmd_serve
    args = parser.parse_args(
        [
            "serve",
            "--store",
            "chdb:///x",
            "--host",
            "0.0.0.0",
            "--port",
            "9000",
            "--keys",
            "/k.json",
        ]
    )
    assert (args.store, args.host, args.port, args.keys) == (
        "chdb:///x",
        "0.0.0.0",
        9000,
        Path("/k.json"),
    )
    args = parser.parse_args(["apikey", "create", "--account", "acc-1"])
    assert args.func is cmd_apikey and args.account == "acc-1" and not args.admin


def _start(store: str, keys: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline.api",
            "serve",
            "--store",
            store,
            "--port",
            str(port),
            "--keys",
            str(keys),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_serve_process(tmp_path: Path):
    """A separate process with its own data directory (this one holds the test store)."""
    keys = tmp_path / "keys.json"
    key, _ = create_key(keys, admin=True)
    store = f"chdb://{tmp_path / 'store'}"
    port = free_port()
    proc = _start(store, keys, port)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "serve did not come up"
            time.sleep(0.2)
        assert httpx.get(f"{base}/api/v1/me").status_code == 401
        me = httpx.get(f"{base}/api/v1/me", headers={"X-API-Key": key}).json()
        assert me["admin"] is True
        r = httpx.get(
            f"{base}/api/v1/cdrs.csv",
            params={"direction": "inbound"},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert r.status_code == 200 and r.text.startswith("Date/Time Start (UTC),")

        # a second process cannot open the same embedded store, and says why
        other = _start(store, keys, free_port())
        _, err = other.communicate(timeout=60)
        assert other.returncode == 2
        assert "cdrpipe serve: cannot open store" in err and "another" in err
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
    assert proc.returncode == 0, err
    assert "Call Logs at http://127.0.0.1:" in err
