"""Opening the CDR store: DSN resolution, connection and the schema.

The store is ClickHouse through clickhouse-connect. With no configuration it is the embedded
chDB engine in the project's data directory, so one machine needs no server; a server is one DSN
away (``http://host:8123/db``). The same code runs against both.

The schema comes from ``deploy/clickhouse/schema.sql`` (the one source of truth) and is applied
idempotently on every connect.

chDB facts that shape this module:

* one data directory per process at a time, and one process per directory: a second opener
  gets a lock error, which is turned into a `StoreError` that says so;
* a database named in the DSN must exist before clickhouse-connect can use it, so `connect`
  connects without it, creates it, then switches to it.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import clickhouse_connect
from clickhouse_connect.driver.binding import quote_identifier
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from pipeline.config import data_dir, environment
from pipeline.resources import data_path

__all__ = [
    "COLUMNS",
    "SCHEMA_PATH",
    "TABLES",
    "Client",
    "StoreError",
    "connect",
    "data_dir",
    "default_dsn",
    "ensure_schema",
    "redact_dsn",
    "schema_statements",
]

SCHEMA_PATH = data_path("clickhouse", "schema.sql")

#: Table per direction (names are code constants, never user input).
TABLES: dict[str, str] = {"outbound": "cdr_outbound", "inbound": "cdr_inbound"}

_COMMON_HEAD = (
    "id",
    "account",
    "gateway",
    "start_time",
    "connect_time",
    "end_time",
    "source",
)
_COMMON_TAIL = (
    "cdr_type",
    "country_name",
    "network_name",
    "trunk",
    "rated",
    "timed_out",
    "flags",
    "revision",
)
#: Columns the code writes and reads, per direction; each is a `CDR` field of the same name.
#: ``ingested_at`` is left to its DEFAULT. A test checks these against the live tables.
COLUMNS: dict[str, tuple[str, ...]] = {
    "outbound": (
        *_COMMON_HEAD,
        "cli",
        "destination",
        "duration",
        "billing_duration",
        "disconnect_code",
        "disconnect_reason",
        "disconnect_initiator",
        "status",
        "rate",
        "charged",
        *_COMMON_TAIL,
    ),
    "inbound": (
        *_COMMON_HEAD,
        "did",
        "destination",
        "duration",
        "disconnect_code",
        "disconnect_reason",
        "disconnect_initiator",
        "status",
        "toll_free_amount",
        "termination_amount",
        "metered_amount",
        *_COMMON_TAIL,
    ),
}


class StoreError(Exception):
    """The store cannot be opened or used (bad DSN, locked directory, schema drift, ...)."""


def default_dsn() -> str:
    """``$CDRPIPE_STORE`` if set, else the embedded store ``chdb://<data dir>/store``."""
    return environment().store or f"chdb://{data_dir() / 'store'}"


def redact_dsn(dsn: str) -> str:
    """The DSN with any password replaced, fit for messages and logs."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", dsn)


def _normalize(dsn: str) -> str:
    """Let a bare directory path stand for the embedded store in that directory."""
    if "://" in dsn:
        return dsn
    return f"chdb://{Path(dsn).expanduser().resolve()}"


def _split_database(dsn: str) -> tuple[str, str | None]:
    """Split a DSN into (DSN without database, database or None).

    Follows clickhouse-connect's own reading: ``chdb:///abs/dir?database=x`` (the path is the
    directory), ``chdb://memory/x`` and ``http(s)://host:port/x`` (first path segment).
    """
    parts = urlsplit(dsn)
    if parts.scheme == "chdb" and not parts.netloc:
        query = parse_qsl(parts.query, keep_blank_values=True)
        database = next((v for k, v in query if k == "database"), None)
        rest = urlencode([(k, v) for k, v in query if k != "database"])
        # rebuilt by hand: urlunsplit would drop the empty authority ("chdb:/dir")
        return f"chdb://{parts.path}" + (f"?{rest}" if rest else ""), database or None
    segment = parts.path.lstrip("/").split("/")[0]
    return urlunsplit(parts._replace(path="")), segment or None


def connect(dsn: str | None = None, *, apply_schema: bool = True) -> Client:
    """Open the store named by `dsn` (default: `default_dsn()`) with the schema in place.

    Accepts any DSN clickhouse-connect accepts, plus a bare directory path for chDB. The caller
    owns the client and must close it (it is a context manager): with chDB an open client pins
    the process to its data directory.
    """
    dsn = _normalize(dsn or default_dsn())
    base, database = _split_database(dsn)
    try:
        location = urlsplit(base)
        if location.scheme == "chdb" and not location.netloc and location.path:
            Path(location.path).mkdir(parents=True, exist_ok=True)
        client = clickhouse_connect.get_client(dsn=base)
    except (ClickHouseError, OSError) as ex:
        hint = ""
        text = str(ex)
        if "Cannot lock file" in text or "already running" in text:
            hint = " (another process has this chDB directory open; stop it or use a server DSN)"
        elif "already initialized with path" in text:
            hint = " (this process already has another chDB directory open; close that client)"
        raise StoreError(f"cannot open store {redact_dsn(dsn)}: {text}{hint}") from ex
    try:
        if database and database != "default":
            _ensure_database(client, database)
        if database:
            client.database = database
        if apply_schema:
            ensure_schema(client)
    except BaseException:
        client.close()
        raise
    return client


def _ensure_database(client: Client, database: str) -> None:
    exists = client.query(
        "SELECT count() FROM system.databases WHERE name = {db:String}",
        parameters={"db": database},
    ).result_rows[0][0]
    if not exists:
        try:
            client.command(f"CREATE DATABASE IF NOT EXISTS {quote_identifier(database)}")
        except ClickHouseError as ex:
            raise StoreError(f"cannot create database {database!r}: {ex}") from ex


def schema_statements(path: Path = SCHEMA_PATH) -> list[str]:
    """The DDL statements of the schema file: own-line ``--`` comments dropped, split on ';'."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as ex:
        raise StoreError(f"cannot read the store schema {path}: {ex}") from ex
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    return [stmt.strip() for stmt in body.split(";") if stmt.strip()]


def ensure_schema(client: Client) -> None:
    """Apply the schema (idempotent) and check that existing tables have every column we use.

    ``CREATE TABLE IF NOT EXISTS`` leaves an older table alone, so a table created by an
    earlier schema would otherwise fail later, on the first insert, far from the cause.
    """
    try:
        for stmt in schema_statements():
            client.command(stmt)
        rows = client.query(
            "SELECT table, name FROM system.columns"
            " WHERE database = currentDatabase() AND table IN {tables:Array(String)}",
            parameters={"tables": list(TABLES.values())},
        ).result_rows
    except ClickHouseError as ex:
        raise StoreError(f"cannot apply the store schema: {ex}") from ex
    present: dict[str, set[str]] = {}
    for table, name in rows:
        present.setdefault(table, set()).add(name)
    for direction, table in TABLES.items():
        missing = [c for c in COLUMNS[direction] if c not in present.get(table, set())]
        if missing:
            raise StoreError(
                f"table {table} lacks columns {', '.join(missing)}: it predates the current"
                f" schema ({SCHEMA_PATH.name}); migrate it (ALTER TABLE ... ADD COLUMN)"
            )
