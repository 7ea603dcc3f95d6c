"""Slow clients cannot hold connections open: a real `cdrpipe serve` process closes a
connection whose request head or body does not arrive within the configured timeouts
(`CDRPIPE_API_HEADER_TIMEOUT_S`, `CDRPIPE_API_BODY_TIMEOUT_S`), while idle keep-alive and
normal requests work as before."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from pipeline.api.auth import create_key
from tests.api.test_browser import free_port

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 1.0
MARGIN_S = 2.0


@dataclass
class Served:
    base: str
    port: int
    key: str
    proc: subprocess.Popen

    def stop(self) -> tuple[str, str]:
        """Stop the server; its stdout and stderr."""
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.communicate()


def start_serve(
    tmp_path: Path, *, log_level: str = "warning", env: dict[str, str] | None = None
) -> Served:
    """`cdrpipe serve` in its own process and data directory (this one holds the test
    store), on a free 127.0.0.1 port, once /healthz answers."""
    keys = tmp_path / "keys.json"
    key, _ = create_key(keys, admin=True)
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline.api",
            "serve",
            "--store",
            f"chdb://{tmp_path / 'store'}",
            "--port",
            str(port),
            "--keys",
            str(keys),
            "--log-level",
            log_level,
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    served = Served(f"http://127.0.0.1:{port}", port, key, proc)
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{served.base}/healthz", timeout=1).status_code == 200:
                return served
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            out, err = served.stop()
            raise AssertionError(f"serve did not come up: {out}\n{err}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    s = start_serve(
        tmp_path_factory.mktemp("timeouts"),
        env={
            "CDRPIPE_API_HEADER_TIMEOUT_S": str(TIMEOUT_S),
            "CDRPIPE_API_BODY_TIMEOUT_S": str(TIMEOUT_S),
            "CDRPIPE_API_KEEP_ALIVE_S": str(TIMEOUT_S),
        },
    )
    try:
        yield s
    finally:
        s.stop()


def closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closed `sock` (EOF or reset), None if still open."""
    start = time.monotonic()
    sock.settimeout(seconds)
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return time.monotonic() - start
    except (ConnectionResetError, BrokenPipeError):
        return time.monotonic() - start
    except TimeoutError:
        return None


@pytest.mark.parametrize(
    "sent",
    [
        b"",  # connects and says nothing
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n",  # half a head
        b"GET /api/v1/me HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\nabc",  # body
    ],
    ids=["nothing", "half-head", "half-body"],
)
def test_a_half_sent_request_is_closed_in_time(served: Served, sent: bytes):
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as sock:
        if sent:
            sock.sendall(sent)
        took = closed_within(sock, TIMEOUT_S + MARGIN_S)
    assert took is not None, f"still open after {TIMEOUT_S + MARGIN_S} s"


def test_trickled_headers_do_not_extend_the_deadline(served: Served):
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as sock:
        start = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        try:
            for _ in range(int((TIMEOUT_S + MARGIN_S) / 0.25)):
                time.sleep(0.25)
                sock.sendall(b"X-Slow: 1\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        took = closed_within(sock, TIMEOUT_S + MARGIN_S)
    assert took is not None and time.monotonic() - start <= TIMEOUT_S + MARGIN_S


def test_complete_requests_and_keep_alive_still_work(served: Served):
    with httpx.Client(base_url=served.base, timeout=5) as c:
        for _ in range(3):
            assert c.get("/healthz").status_code == 200
            assert c.get("/api/v1/me", headers={"X-API-Key": served.key}).json()["admin"]
            time.sleep(TIMEOUT_S / 3)  # pauses between requests below the keep-alive timeout
