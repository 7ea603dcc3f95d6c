"""Each part of the server layout gets only the ClickHouse rights it needs.

docker-compose.yml: the admin (the image's CLICKHOUSE_USER) applies the schema and manages
users, at ClickHouse start-up only (deploy/clickhouse/initdb); the sink inserts as a writer
with INSERT only; the API reads as a reader with SELECT only. `cdrpipe serve` also asks for a
read-only session, so even a mis-configured user cannot write through it.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from pipeline.api import cli as api_cli
from pipeline.cli import build_parser
from pipeline.store import client as store_client
from pipeline.store.client import COLUMNS, TABLES, StoreError, connect, ensure_schema
from tests.unit.test_compose import env_of, load

ROOT = Path(__file__).resolve().parents[2]
INITDB = ROOT / "deploy" / "clickhouse" / "initdb"
SECRETS = {
    "CLICKHOUSE_PASSWORD": "admin-not-a-real-password",
    "CLICKHOUSE_READER_PASSWORD": "reader-not-a-real-password",
    "CLICKHOUSE_WRITER_PASSWORD": "writer-not-a-real-password",
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load(SECRETS)


def dsn_of(compose: dict[str, Any], service: str) -> Any:
    return urlsplit(env_of(compose["services"][service])["CDRPIPE_STORE"])


# --------------------------------------------------------------------------- compose


def test_api_sink_and_admin_are_different_users(compose: dict[str, Any]) -> None:
    ch = env_of(compose["services"]["clickhouse"])
    api, sink = dsn_of(compose, "api"), dsn_of(compose, "sink")
    assert len({api.username, sink.username, ch["CLICKHOUSE_USER"]}) == 3
    assert (api.username, api.password) == (
        ch["CLICKHOUSE_READER_USER"],
        SECRETS["CLICKHOUSE_READER_PASSWORD"],
    )
    assert (sink.username, sink.password) == (
        ch["CLICKHOUSE_WRITER_USER"],
        SECRETS["CLICKHOUSE_WRITER_PASSWORD"],
    )


def test_admin_credentials_stay_in_the_clickhouse_container(compose: dict[str, Any]) -> None:
    admin = SECRETS["CLICKHOUSE_PASSWORD"]
    for name, service in compose["services"].items():
        if name != "clickhouse":
            assert all(admin not in v for v in env_of(service).values()), name


def test_every_password_is_required_from_the_environment() -> None:
    for name in SECRETS:
        with pytest.raises(ValueError, match=name):
            load({k: v for k, v in SECRETS.items() if k != name})


def test_init_scripts_run_on_every_start(compose: dict[str, Any]) -> None:
    ch = compose["services"]["clickhouse"]
    env = env_of(ch)
    assert env["CLICKHOUSE_ALWAYS_RUN_INITDB_SCRIPTS"] == "1"  # new passwords, new schema
    assert env["CLICKHOUSE_DEFAULT_ACCESS_MANAGEMENT"] == "1"  # the admin creates the users
    mounts = {v.split(":")[1]: v.split(":")[0] for v in ch["volumes"]}
    assert mounts["/docker-entrypoint-initdb.d"] == "./deploy/clickhouse/initdb"
    assert mounts["/etc/cdrpipe/clickhouse"] == "./deploy/clickhouse"  # schema.sql


# --------------------------------------------------------------------------- init SQL


def init_text() -> str:
    scripts = sorted(INITDB.glob("*.sh"))
    assert scripts, f"no init script in {INITDB}"
    return "\n".join(p.read_text(encoding="utf-8") for p in scripts)


def grants() -> dict[str, set[str]]:
    """Grantee -> privileges, from every GRANT statement of the init scripts."""
    found: dict[str, set[str]] = {}
    for privs, _obj, grantee in re.findall(
        r"^\s*GRANT\s+(.+?)\s+ON\s+(\S+)\s+TO\s+([^\s;]+)", init_text(), re.M | re.I
    ):
        found.setdefault(grantee, set()).update(p.strip().upper() for p in privs.split(","))
    return found


def test_reader_may_only_select_and_writer_only_insert() -> None:
    text = init_text()
    assert grants() == {
        "${CLICKHOUSE_READER_USER}": {"SELECT"},
        "${CLICKHOUSE_WRITER_USER}": {"INSERT"},
    }
    on = set(re.findall(r"^\s*GRANT\s+.+?\s+ON\s+(\S+)\s+TO", text, re.M | re.I))
    assert on == {"${CLICKHOUSE_DB}.*"}
    # OR REPLACE: a user starts from no rights at every start, whatever was granted by hand
    for user in ("${CLICKHOUSE_READER_USER}", "${CLICKHOUSE_WRITER_USER}"):
        assert re.search(rf"CREATE USER OR REPLACE {re.escape(user)} ", text), user


def test_init_passwords_come_from_the_environment() -> None:
    text = init_text()
    secrets = re.findall(r"IDENTIFIED\b.*?\bBY\s+'([^']*)'", text)
    assert secrets == ["${CLICKHOUSE_READER_PASSWORD}", "${CLICKHOUSE_WRITER_PASSWORD}"]
    assert "schema.sql" in text  # the admin step applies the schema


# --------------------------------------------------------------------------- the sink's writer


class FakeClient:
    """A client whose user may not run DDL (code 497), over a store whose schema is in place."""

    database = None

    def __init__(self, tables: dict[str, tuple[str, ...]]) -> None:
        self.tables = tables
        self.commands: list[str] = []

    def command(self, sql: str) -> None:
        self.commands.append(sql)
        raise DatabaseError("Code: 497. DB::Exception: writer: Not enough privileges", code=497)

    def query(self, sql: str, parameters: Any = None) -> Any:
        rows = [(t, c) for t, cols in self.tables.items() for c in cols]
        return type("Result", (), {"result_rows": rows})()


def test_user_without_ddl_rights_checks_the_schema_only() -> None:
    fake = FakeClient({TABLES[d]: COLUMNS[d] for d in TABLES})
    ensure_schema(fake)  # type: ignore[arg-type]
    assert len(fake.commands) == 1  # tried once, then left the schema to the admin


def test_user_without_ddl_rights_is_told_when_the_schema_is_missing() -> None:
    fake = FakeClient({})
    with pytest.raises(StoreError, match="admin"):
        ensure_schema(fake)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- cdrpipe serve


def serve_args(store: str, tmp_path: Path) -> argparse.Namespace:
    return build_parser().parse_args(["serve", "--store", store, "--keys", str(tmp_path / "k")])


def test_serve_asks_a_server_for_a_read_only_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[dict[str, Any]] = []

    def get_client(**kwargs: Any) -> None:
        seen.append(kwargs)
        raise OperationalError("no server here")

    monkeypatch.setattr(store_client.clickhouse_connect, "get_client", get_client)
    args = serve_args("http://reader:pw@clickhouse:8123/cdr", tmp_path)
    assert api_cli.cmd_serve(args) == 2
    assert seen, "serve never opened the store"
    # readonly=2: writes and DDL refused, per-query settings (the API's selects set some) kept
    assert seen[0]["settings"]["readonly"] == store_client.READONLY == 2


@pytest.fixture
def served_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """The client `cdrpipe serve` hands to the app (the server itself is not started)."""
    import uvicorn

    import pipeline.api.app

    clients: list[Any] = []
    outcomes: list[Any] = []

    def create_app(client: Any, *args: Any, **kwargs: Any) -> object:
        clients.append(client)
        try:
            client.command("INSERT INTO cdr_outbound (id) VALUES ('x')")
            outcomes.append(None)
        except Exception as exc:
            outcomes.append(exc)
        outcomes.append(client.query("SELECT count() FROM cdr_outbound").result_rows[0][0])
        return object()

    monkeypatch.setattr(pipeline.api.app, "create_app", create_app)
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: None)
    assert api_cli.cmd_serve(serve_args(f"chdb://{tmp_path / 'store'}", tmp_path)) == 0
    yield outcomes


def test_serve_opens_the_embedded_store_read_only(served_client: list[Any]) -> None:
    refused, rows = served_client
    assert refused is not None and "readonly" in str(refused).lower()
    assert rows == 0


def test_read_only_open_of_a_server_does_not_create_the_database(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class NoDatabase(FakeClient):
        def query(self, sql: str, parameters: Any = None) -> Any:
            return type("Result", (), {"result_rows": [(0,)]})()  # system.databases: none

        def close(self) -> None:
            closed.append(True)

    closed: list[bool] = []
    fake = NoDatabase({})
    monkeypatch.setattr(store_client.clickhouse_connect, "get_client", lambda **kw: fake)
    with pytest.raises(StoreError, match="does not exist"):
        connect("http://reader:pw@clickhouse:8123/cdr", readonly=True)
    assert fake.commands == [] and closed == [True]
