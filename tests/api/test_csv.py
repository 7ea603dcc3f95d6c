"""GET /api/v1/cdrs.csv: byte for byte what `cdrpipe export` writes, streamed in chunks."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from pipeline.api.app import create_app
from pipeline.cli import main as cli_main
from pipeline.store.export import INBOUND_HEADER, OUTBOUND_HEADER
from tests.api.conftest import Env, auth

# API query parameter -> `cdrpipe export` option
OPTION = {
    "from": "--from",
    "to": "--to",
    "account": "--account",
    "source": "--source",
    "destination": "--destination",
    "type": "--type",
    "status": "--status",
}

CASES = [
    {"direction": "outbound"},
    {"direction": "inbound"},
    {"direction": "outbound", "account": "acc-1003"},
    {"direction": "outbound", "status": "answered", "type": "International"},
    {"direction": "outbound", "source": "3", "destination": "4"},
    {"direction": "inbound", "destination": "1800", "status": "busy"},
    {"direction": "inbound", "account": "acc-1002", "type": "Local"},
    {"direction": "outbound", "account": "evil"},
    {"direction": "inbound", "account": "evil"},
    {"direction": "outbound", "account": "nobody"},
]


def cli_export(env: Env, params: dict, out: Path) -> bytes:
    argv = ["export", "--direction", params["direction"], "--store", env.dsn, "-o", str(out)]
    for name, option in OPTION.items():
        if params.get(name):
            argv += [option, params[name]]
    if params.get("excel") == "true":
        argv.append("--excel")
    assert cli_main(argv) == 0
    return out.read_bytes()


@pytest.mark.parametrize("params", CASES, ids=lambda p: "-".join(p.values()))
def test_csv_equals_cdrpipe_export(api, env: Env, params, tmp_path: Path):
    query = env.params(**params)
    r = api.get("/api/v1/cdrs.csv", params=query, headers=auth(env.keys["admin"]))
    assert r.status_code == 200
    want = cli_export(env, query, tmp_path / "export.csv")
    assert r.content == want
    assert want.count(b"\n") >= 1


def test_csv_of_an_account_key_equals_export_of_that_account(api, env: Env, tmp_path: Path):
    query = env.params(direction="outbound")
    r = api.get("/api/v1/cdrs.csv", params=query, headers=auth(env.keys["acc-1001"]))
    want = cli_export(env, {**query, "account": "acc-1001"}, tmp_path / "a.csv")
    assert r.content == want and want.count(b"\n") > 100


@pytest.mark.parametrize(("chunk", "account", "rows"), [(7, "acc-1001", 300), (997, None, 10_000)])
def test_csv_in_small_chunks_is_identical(env: Env, tmp_path: Path, chunk, account, rows):
    """Chunk boundaries (keyset continuation between store queries) lose or repeat nothing."""
    query = env.params(direction="outbound", account=account)
    with TestClient(create_app(env.client, env.keys_path, export_chunk_rows=chunk)) as api:
        r = api.get("/api/v1/cdrs.csv", params=query, headers=auth(env.keys["admin"]))
    assert r.content == cli_export(env, query, tmp_path / "all.csv")
    assert r.content.count(b"\n") > rows


def test_csv_headers_and_layouts(api, env: Env):
    for direction, header in (("outbound", OUTBOUND_HEADER), ("inbound", INBOUND_HEADER)):
        r = api.get(
            "/api/v1/cdrs.csv",
            params=env.params(direction=direction),
            headers=auth(env.keys["kpi-a"]),
        )
        assert r.headers["content-type"].startswith("text/csv")
        disposition = r.headers["content-disposition"]
        assert disposition.startswith('attachment; filename="cdrs-' + direction)
        rows = list(csv.reader(io.StringIO(r.text)))
        assert rows[0] == header
        assert all(len(row) == len(header) for row in rows)


def test_csv_cells(api, env: Env):
    r = api.get(
        "/api/v1/cdrs.csv", params=env.params(direction="outbound"), headers=auth(env.keys["kpi-a"])
    )
    rows = list(csv.DictReader(io.StringIO(r.text)))
    o1 = rows[0]
    assert o1["Charged (USD)"] == "0.024600" and o1["Rate (USD per minute)"] == "0.0123"
    assert o1["Duration (secs)"] == "61" and o1["Billing Duration"] == "120"
    unrated = next(row for row in rows if row["Duration (secs)"] == "10")
    assert unrated["Charged (USD)"] == "" and unrated["Rate (USD per minute)"] == ""
    timed_out = next(row for row in rows if row["Disconnect Reason"] == "Timed out")
    assert timed_out["Disconnect Code"] == ""


def test_formula_cells_are_neutralized(api, env: Env):
    r = api.get(
        "/api/v1/cdrs.csv",
        params=env.params(direction="outbound", account="evil"),
        headers=auth(env.keys["admin"]),
    )
    (row,) = list(csv.DictReader(io.StringIO(r.text)))
    assert row["Disconnect Reason"] == '\'=HYPERLINK("http://x.invalid","y")'
    assert row["Source"] == "'-12345"
    assert row["CLI*"] == "'\tcli"
    assert row["Destination"] == "'=1+1"
    assert row["Trunk Name"] == "'@trunk"
    assert row["Country Name"] == "'+Country"
    r = api.get(
        "/api/v1/cdrs.csv",
        params=env.params(direction="inbound", account="evil"),
        headers=auth(env.keys["admin"]),
    )
    # a cell holding a CR or a ";" is quoted, whatever the line ends: check the bytes
    cells = b',"\'\r123",18005550100,"' + "sip:=cmd@example.com;ü=☎".encode() + b'",'
    assert cells in r.content


def test_empty_export_is_just_the_header(api, env: Env):
    r = api.get(
        "/api/v1/cdrs.csv",
        params=env.params(direction="inbound", source="000"),
        headers=auth(env.keys["kpi-a"]),
    )
    assert r.status_code == 200
    assert r.text == ",".join(INBOUND_HEADER) + "\n"


BOM = b"\xef\xbb\xbf"


@pytest.mark.parametrize("direction", ["outbound", "inbound"])
def test_excel_export_has_a_bom_and_crlf(api, env: Env, direction):
    query = env.params(direction=direction)
    key = auth(env.keys["kpi-a"])
    plain = api.get("/api/v1/cdrs.csv", params=query, headers=key).content
    excel = api.get("/api/v1/cdrs.csv", params={**query, "excel": "true"}, headers=key)
    assert excel.status_code == 200 and excel.headers["content-type"].startswith("text/csv")
    # the default stays plain UTF-8 with LF line ends
    assert not plain.startswith(BOM) and b"\r" not in plain
    body = excel.content
    assert body.startswith(BOM) and body.count(BOM) == 1
    lines = body[len(BOM) :].split(b"\r\n")
    assert lines[-1] == b"" and all(b"\n" not in line for line in lines)
    # the same cells, line for line
    assert b"\n".join(lines) == plain
    assert len(lines) - 1 == plain.count(b"\n") > 1


@pytest.mark.parametrize("params", CASES[:2] + CASES[7:9], ids=lambda p: "-".join(p.values()))
def test_excel_export_equals_cdrpipe_export_excel(api, env: Env, params, tmp_path: Path):
    query = {**env.params(**params), "excel": "true"}
    r = api.get("/api/v1/cdrs.csv", params=query, headers=auth(env.keys["admin"]))
    assert r.status_code == 200
    assert r.content == cli_export(env, query, tmp_path / "excel.csv")


def test_excel_export_in_small_chunks_is_identical(env: Env):
    """The byte order mark comes once, before the header, however many chunks follow."""
    query = {**env.params(direction="outbound", account="acc-1001"), "excel": "true"}
    key = auth(env.keys["admin"])
    with TestClient(create_app(env.client, env.keys_path, export_chunk_rows=7)) as small:
        chunked = small.get("/api/v1/cdrs.csv", params=query, headers=key).content
    with TestClient(create_app(env.client, env.keys_path)) as whole:
        single = whole.get("/api/v1/cdrs.csv", params=query, headers=key).content
    assert chunked == single and chunked.startswith(BOM) and chunked.count(BOM) == 1
    assert chunked.count(b"\r\n") > 300


def test_excel_export_reads_back_cell_for_cell(api, env: Env):
    """A cell holding a bare CR is quoted in the Excel form, so a CSV reader (and Excel) keeps
    it in its cell, unlike the plain LF form."""
    r = api.get(
        "/api/v1/cdrs.csv",
        params={**env.params(direction="inbound", account="evil"), "excel": "true"},
        headers=auth(env.keys["admin"]),
    )
    rows = list(csv.reader(io.StringIO(r.content.decode("utf-8-sig"), newline="")))
    assert rows[0] == INBOUND_HEADER
    (row,) = rows[1:]
    assert row[INBOUND_HEADER.index("Source")] == "'\r123"
    assert row[INBOUND_HEADER.index("Destination")] == "sip:=cmd@example.com;ü=☎"
