"""The Call Logs page as served: no key needed for the page itself, nothing from elsewhere."""

from __future__ import annotations

import re

from pipeline.api.page import STATIC_DIR
from pipeline.store.export import INBOUND_HEADER, OUTBOUND_HEADER


def test_page_is_served_without_a_key(api):
    r = api.get("/", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/call-logs"
    r = api.get("/call-logs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert "<h1>Call Logs</h1>" in html and 'id="key-dialog"' in html
    for header in OUTBOUND_HEADER + INBOUND_HEADER:
        assert f"<th>{header}</th>" in html
    for status in ("answered", "busy", "no-answer", "cancelled", "failed"):
        assert f'<option value="{status}">' in html
    assert '<option value="Origin based">' in html


def test_page_headers_lock_it_to_this_origin(api):
    r = api.get("/call-logs")
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "connect-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert r.headers["x-content-type-options"] == "nosniff"


def test_assets_are_local(api):
    html = api.get("/call-logs").text
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets and all(a.startswith("/static/") or a == "data:," for a in assets)
    for path in STATIC_DIR.iterdir():
        text = path.read_text()
        # the SVG namespace is a name, not a fetch
        urls = set(re.findall(r"https?://[^\s\"'`)]+", text)) - {"http://www.w3.org/2000/svg"}
        assert urls == set(), path
        r = api.get(f"/static/{path.name}")
        assert r.status_code == 200 and r.content == path.read_bytes()


def test_script_never_writes_html():
    script = (STATIC_DIR / "call-logs.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script


def test_openapi_is_served_and_docs_need_no_cdn(api):
    schema = api.get("/openapi.json").json()
    assert set(schema["paths"]) >= {"/api/v1/cdrs", "/api/v1/cdrs.csv", "/api/v1/kpis"}
    assert "422" not in str(schema["paths"])
    assert api.get("/docs").status_code == 404  # Swagger UI would load from a CDN


def test_healthz(api):
    assert api.get("/healthz").json() == {"status": "ok"}


def test_page_offers_flags_rating_and_excel(api):
    html = api.get("/call-logs").text
    for flag in ("account_mismatch", "unknown_trunk", "unknown_did", "no_rate"):
        assert f'<option value="{flag}">' in html
    assert 'id="f-flag"' in html and 'id="f-rated"' in html
    assert '<option value="false">unrated</option>' in html
    assert 'id="k-mismatch"' in html
    assert '<input type="checkbox" id="excel"> for Excel' in html
