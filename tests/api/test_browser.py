"""The Call Logs page in real headless Chromium (Debian's package), driven by Playwright.

Loads the page from a uvicorn server in a thread, signs in with a key, filters, sees the table
change, exports CSV and compares the download with `cdrpipe export` and with the table; the
screenshot lands in test-artifacts/. No skipping: without Chromium this test fails, saying how
to install it (CI installs it in its setup script).
"""

from __future__ import annotations

import csv
import io
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI

from pipeline.cli import main as cli_main
from tests.api.conftest import Env

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def served_in_thread(app: FastAPI) -> Iterator[str]:
    """`app` under uvicorn in a thread of this process, on a free 127.0.0.1 port: its URL."""
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def server(app: FastAPI) -> Iterator[str]:
    with served_in_thread(app) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.fail(
            f"{CHROMIUM} not found: the browser test needs Debian's chromium package"
            " (apt-get install -y chromium)"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser test needs Playwright's Python package (pip install playwright)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()


def test_call_logs_page(server: str, browser, env: Env, tmp_path: Path):
    from playwright.sync_api import expect

    context = browser.new_context(accept_downloads=True, viewport={"width": 1500, "height": 1100})
    page = context.new_page()
    foreign: list[str] = []
    errors: list[str] = []
    page.on("request", lambda r: None if r.url.startswith(server) else foreign.append(r.url))
    # (the refused key's 401 is logged by Chromium as a failed resource: expected)
    page.on(
        "console",
        lambda m: errors.append(m.text) if m.type == "error" and "401" not in m.text else None,
    )
    page.on("pageerror", lambda e: errors.append(str(e)))

    page.goto(f"{server}/")
    assert page.url == f"{server}/call-logs"
    # no key yet: the page asks for one; a wrong one is refused
    page.wait_for_selector("#key-dialog[open]")
    page.fill("#key-input", "cdrp_wrong")
    page.click("#key-submit")
    expect(page.locator("#key-error")).to_contain_text("not accepted")
    page.fill("#key-input", env.keys["acc-1001"])
    page.click("#key-submit")
    page.wait_for_selector("#rows tr")
    expect(page.locator("#k-attempts")).not_to_have_text("-")
    ARTIFACTS.mkdir(exist_ok=True)
    assert page.inner_text("#who") == "account acc-1001"
    assert page.input_value("#f-account") == "acc-1001"
    assert page.evaluate("sessionStorage.getItem('cdrpipe.apiKey')") == env.keys["acc-1001"]

    page.screenshot(path=str(ARTIFACTS / "call-logs.png"), full_page=True)
    before = page.eval_on_selector_all("#rows tr", "rows => rows.map(r => r.dataset.status)")
    assert len(before) == 100 and len(set(before)) > 1
    assert int(page.inner_text("#k-attempts").replace(",", "")) > 100
    assert page.locator("#chart rect.bar").count() >= 2

    # filter: only busy calls; the table changes to exactly those
    page.select_option("#f-status", "busy")
    page.click("#apply")
    expect(page.locator('#rows tr:not([data-status="busy"])')).to_have_count(0)
    expect(page.locator("#rows tr").first).to_be_visible()
    rows = page.eval_on_selector_all(
        "#rows tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))"
    )
    assert 0 < len(rows) < 100
    assert page.inner_text("#summary") == f"Rows 1–{len(rows)}"

    # export: the file is what `cdrpipe export` writes for the same filters, and the table
    with page.expect_download() as info:
        page.click("#export")
    download = info.value
    assert download.suggested_filename.startswith("cdrs-outbound-")
    got = Path(download.path()).read_bytes()
    want_path = tmp_path / "want.csv"
    assert (
        cli_main(
            [
                "export",
                "--direction",
                "outbound",
                "--store",
                env.dsn,
                "--from",
                page.input_value("#f-from"),
                "--to",
                page.input_value("#f-to"),
                "--account",
                "acc-1001",
                "--status",
                "busy",
                "-o",
                str(want_path),
            ]
        )
        == 0
    )
    assert got == want_path.read_bytes()
    exported = list(csv.reader(io.StringIO(got.decode())))
    assert exported[1:] == rows

    page.screenshot(path=str(ARTIFACTS / "call-logs-busy.png"), full_page=True)

    # the inbound tab shows the inbound layout
    page.click("#tab-inbound")
    expect(page.locator("#head-inbound")).to_be_visible()
    expect(page.locator("#head-outbound")).to_be_hidden()
    expect(page.locator("#rows tr").first).to_be_visible()
    assert page.locator("#head-inbound th").count() == 13

    # flags: account kpi-f holds flagged and unrated calls of every kind (tests/api/dataset.py)
    page.select_option("#f-status", "")
    page.click("#tab-outbound")
    page.click("#signout")
    page.fill("#key-input", env.keys["kpi-f"])
    page.click("#key-submit")
    f2 = page.locator('#rows tr[data-id="fx-f2"]')
    expect(f2).to_be_visible()
    expect(page.locator("#k-mismatch")).to_have_text("2")
    expect(page.locator("#k-unrated")).to_have_text("4")
    assert "no rate: 2" in page.get_attribute("#k-unrated >> xpath=..", "title")
    assert f2.get_attribute("data-rated") == "false"
    assert "trunk is not in the reference data" in f2.get_attribute("title")
    after = "td => getComputedStyle(td, '::after').content"
    assert f2.locator("td").first.evaluate(after) == '"unrated"'
    f5_first = page.locator('#rows tr[data-id="fx-f5"] td').first
    assert f5_first.evaluate(after) == '"unrated · account mismatch"'
    charged = f2.locator("td").nth(11)  # Charged (USD): empty text, marked unrated
    assert charged.text_content() == "" and charged.evaluate(after) == '"unrated"'
    page.screenshot(path=str(ARTIFACTS / "call-logs-flags.png"), full_page=True)
    page.select_option("#f-flag", "account_mismatch")
    page.click("#apply")
    expect(page.locator("#rows tr")).to_have_count(2)
    ids = page.eval_on_selector_all("#rows tr", "rows => rows.map(r => r.dataset.id)")
    assert ids == ["fx-f1", "fx-f5"]
    # inbound: an amount that could not be rated is told apart from a service not used
    page.select_option("#f-flag", "")
    page.click("#tab-inbound")
    fi2 = page.locator('#rows tr[data-id="fx-fi2"] td')
    expect(fi2.first).to_be_visible()
    amounts = [fi2.nth(i).get_attribute("class") for i in (10, 11, 12)]
    assert amounts == [None, "unrated", "unused"]
    assert [fi2.nth(i).text_content() for i in (10, 11, 12)] == ["0.010000", "", ""]
    # the Excel form of the export
    page.check("#excel")
    with page.expect_download() as info:
        page.click("#export")
    excel = Path(info.value.path()).read_bytes()
    assert excel.startswith(b"\xef\xbb\xbf") and excel.count(b"\r\n") == 4  # header + 3

    assert foreign == []
    assert errors == []
    context.close()


def test_an_error_clears_the_previous_results(server: str, browser, env: Env):
    """A refused filter leaves no rows, KPIs or chart of the previous filters on screen: next
    to the error they would pass for its answer."""
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1500, "height": 1100})
    page = context.new_page()
    page.goto(f"{server}/call-logs")
    page.wait_for_selector("#key-dialog[open]")
    page.fill("#key-input", env.keys["acc-1001"])
    page.click("#key-submit")
    page.wait_for_selector("#rows tr")
    expect(page.locator("#k-attempts")).not_to_have_text("-")
    assert page.locator("#chart rect.bar").count() >= 2

    page.fill("#f-from", "yesterday-ish")
    page.click("#apply")
    expect(page.locator("#message")).to_contain_text("from")
    expect(page.locator("#rows tr")).to_have_count(0)
    expect(page.locator("#summary")).to_have_text("-")
    expect(page.locator("#k-attempts")).to_have_text("-")
    expect(page.locator("#chart rect.bar")).to_have_count(0)
    assert page.locator("#next").is_disabled()
    context.close()
