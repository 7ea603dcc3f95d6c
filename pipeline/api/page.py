"""The "Call Logs" web page: plain server-side HTML, a small script, no third-party assets.

The page itself needs no key: it asks for one, keeps it in sessionStorage (gone when the tab
closes) and sends it with every fetch, so all data still goes through the authenticated API.
A strict Content-Security-Policy allows only this origin's script, style and fetches: the page
works offline and data shown in it cannot run as code (the script writes text, never HTML).
"""

from __future__ import annotations

from html import escape
from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from pipeline.store.export import HEADERS
from pipeline.store.queries import CDR_TYPES, FLAGS, STATUSES

__all__ = ["STATIC_DIR", "mount_static", "render", "router"]

STATIC_DIR = Path(str(files("pipeline.api") / "static"))

_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)

router = APIRouter(include_in_schema=False)


def _options(values: tuple[str, ...], blank: str) -> str:
    items = [f'<option value="">{escape(blank)}</option>']
    items += [f'<option value="{escape(v)}">{escape(v)}</option>' for v in values]
    return "".join(items)


def _flag_options() -> str:
    items = ['<option value="">Any</option>']
    items += [f'<option value="{escape(v)}">{escape(v.replace("_", " "))}</option>' for v in FLAGS]
    return "".join(items)


def _header_row(direction: str) -> str:
    return "".join(f"<th>{escape(h)}</th>" for h in HEADERS[direction])


def render() -> str:
    """The page's HTML (the same for everyone: data arrives through the API)."""
    return _TEMPLATE.format(
        types=_options(CDR_TYPES, "Any type"),
        statuses=_options(STATUSES, "Any status"),
        flags=_flag_options(),
        outbound_head=_header_row("outbound"),
        inbound_head=_header_row("inbound"),
    )


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("/call-logs", status_code=307)


@router.get("/call-logs", response_class=HTMLResponse)
async def call_logs() -> HTMLResponse:
    return HTMLResponse(
        render(), headers={"Content-Security-Policy": _CSP, "Cache-Control": "no-store"}
    )


def mount_static(app: FastAPI) -> None:
    """Serve the page's script and style sheet from the package."""
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


_TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Call Logs</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/static/call-logs.css">
<script src="/static/call-logs.js" defer></script>
</head>
<body>
<header class="top">
  <h1>Call Logs</h1>
  <div class="who"><span id="who"></span>
    <button type="button" id="signout" class="link" hidden>Change key</button></div>
</header>

<dialog id="key-dialog">
  <form id="key-form" method="dialog">
    <h2>API key</h2>
    <p>Enter the API key you were given. It is kept in this browser tab only.</p>
    <label>API key <input id="key-input" name="key" type="password" autocomplete="off"
      required></label>
    <p id="key-error" class="error" role="alert"></p>
    <button type="submit" id="key-submit">Sign in</button>
  </form>
</dialog>

<main>
  <nav class="tabs" role="tablist">
    <button type="button" role="tab" data-direction="outbound" id="tab-outbound"
      aria-selected="true">Outbound</button>
    <button type="button" role="tab" data-direction="inbound" id="tab-inbound"
      aria-selected="false">Inbound</button>
  </nav>

  <form id="filters" class="filters">
    <label>From (UTC, inclusive) <input name="from" id="f-from" maxlength="64"
      placeholder="YYYY-MM-DD HH:MM:SS"></label>
    <label>To (UTC, exclusive) <input name="to" id="f-to" maxlength="64"
      placeholder="YYYY-MM-DD HH:MM:SS"></label>
    <label>Account <input name="account" id="f-account" maxlength="256"></label>
    <label>Source <input name="source" id="f-source" maxlength="256"
      placeholder="number prefix"></label>
    <label>Destination <input name="destination" id="f-destination" maxlength="256"
      placeholder="number prefix"></label>
    <label>CDR Type <select name="type" id="f-type">{types}</select></label>
    <label>Status <select name="status" id="f-status">{statuses}</select></label>
    <label>Rating <select name="rated" id="f-rated">
      <option value="">Any</option><option value="true">rated</option>
      <option value="false">unrated</option>
    </select></label>
    <label>Flag <select name="flag" id="f-flag">{flags}</select></label>
    <label>Rows <select name="limit" id="f-limit">
      <option>25</option><option selected>100</option><option>500</option><option>1000</option>
    </select></label>
    <div class="actions">
      <button type="submit" id="apply">Apply</button>
      <button type="reset" id="reset" class="secondary">Reset</button>
    </div>
  </form>

  <p id="message" class="error" role="alert"></p>

  <section class="kpis" id="kpis" aria-label="KPIs">
    <div class="tile"><span>Attempts</span><b id="k-attempts">-</b></div>
    <div class="tile"><span>Answered</span><b id="k-answered">-</b></div>
    <div class="tile"><span>ASR</span><b id="k-asr">-</b></div>
    <div class="tile"><span>ACD</span><b id="k-acd">-</b></div>
    <div class="tile"><span>NER</span><b id="k-ner">-</b></div>
    <div class="tile"><span>Minutes</span><b id="k-minutes">-</b></div>
    <div class="tile"><span>Billed minutes</span><b id="k-billed">-</b></div>
    <div class="tile"><span>Charged (USD)</span><b id="k-charged">-</b></div>
    <div class="tile"><span>Unrated</span><b id="k-unrated">-</b></div>
    <div class="tile"><span>Timed out</span><b id="k-timedout">-</b></div>
    <div class="tile"><span>Account mismatch</span><b id="k-mismatch">-</b></div>
  </section>

  <section class="chart">
    <h2>Calls and ASR over time</h2>
    <svg id="chart" role="img" aria-label="Calls and ASR over time"
      viewBox="0 0 900 220"></svg>
    <p class="legend"><span class="sw bars"></span> calls
      <span class="sw line"></span> ASR %</p>
  </section>

  <section class="results">
    <div class="bar">
      <span id="summary">-</span>
      <span class="export">
        <label><input type="checkbox" id="excel"> for Excel</label>
        <button type="button" id="export">Export CSV</button>
      </span>
    </div>
    <div class="scroll">
      <table id="results">
        <thead id="head-outbound"><tr>{outbound_head}</tr></thead>
        <thead id="head-inbound" hidden><tr>{inbound_head}</tr></thead>
        <tbody id="rows"></tbody>
      </table>
    </div>
    <p class="legend">Rows marked <span class="badge">unrated</span> or
      <span class="badge">account mismatch</span> carry flags (hover a row for the reasons).
      A field the call could not be rated for shows <i class="unrated-sample">unrated</i>;
      an inbound amount left empty is a service not used. In the CSV both are empty cells.</p>
    <div class="pager">
      <button type="button" id="prev" class="secondary" disabled>Previous</button>
      <span id="page-no">Page 1</span>
      <button type="button" id="next" class="secondary" disabled>Next</button>
    </div>
  </section>
</main>
</body>
</html>
"""
