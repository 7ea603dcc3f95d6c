"""Opening the CDR store: DSN resolution, connection and the schema.

The store is ClickHouse through clickhouse-connect. With no configuration it is the embedded
chDB engine in the project's data directory, so one machine needs no server; a server is one DSN
away (``http://host:8123/db``). The same code runs against both.

The schema comes from ``deploy/clickhouse/schema.sql`` (the one source of truth) and is applied
idempotently on every connect by a user allowed to; a user that may not change the schema (the
sink's insert-only user, the API's reader) leaves that to the admin and only checks it.

chDB facts that shape this module:

* one data directory per process at a time, and one process per directory: a second opener
  gets a lock error, which is turned into a `StoreError` that says so;
* a database named in the DSN must exist before clickhouse-connect can use it, so `connect`
  connects without it, creates it, then switches to it;
* the engine writes its files (parts on every insert, merges, metadata) from its own threads
  for as long as it is open, with modes only the process umask governs. So the directory is
  created 0o700 and the umask is tightened (``| 0o077``) from the open until the client is
  closed (`pipeline.private_files`): the store is readable by its owner only, like the API
  keys file, and a program that merely imports this module keeps its umask.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import clickhouse_connect
from clickhouse_connect.driver.binding import quote_identifier
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from pipeline import private_files as private
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

#: ClickHouse error codes of a user that may not run a statement (no grant; a read-only
#: session): the schema is then the admin's job, and only checked here.
_NOT_ALLOWED = {164, 497}  # READONLY, ACCESS_DENIED

#: The session setting of a read-only client: no INSERT, no DDL, no lowering it again. Not 1:
#: that also refuses per-query settings, which the API's selects set
#: (``do_not_merge_across_partitions_select_final``); chDB's own read-only mode is 2 too.
READONLY = 2

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


def connect(dsn: str | None = None, *, apply_schema: bool = True, readonly: bool = False) -> Client:
    """Open the store named by `dsn` (default: `default_dsn()`) with the schema in place.

    Accepts any DSN clickhouse-connect accepts, plus a bare directory path for chDB. The caller
    owns the client and must close it (it is a context manager): with chDB an open client pins
    the process to its data directory, and keeps the process umask tightened (module doc).

    `readonly`: a client that can only read, whoever its user is. A server gets the session
    setting ``readonly`` (`READONLY`) with every request, so the server refuses writes and DDL;
    the schema is only checked, never applied. chDB has a read-only open (engine option
    ``mode=ro``: `READONLY` for every session of the engine); it comes after a short
    read-write open that applies the schema, so that a new directory gets its tables (no other
    process can write a directory this one has open).
    """
    dsn = _normalize(dsn or default_dsn())
    base, database = _split_database(dsn)
    location = urlsplit(base)
    embedded = location.scheme == "chdb" and not location.netloc and bool(location.path)
    if readonly and embedded:
        if apply_schema:
            connect(dsn).close()
        client = _open(dsn, base, embedded=True, chdb_options={"mode": "ro"})
    elif readonly:
        client = _open(dsn, base, embedded=False, settings={"readonly": READONLY})
    else:
        client = _open(dsn, base, embedded=embedded)
    try:
        if database and database != "default":
            _ensure_database(client, database, create=not readonly)
        if database:
            client.database = database
        if apply_schema:
            ensure_schema(client, apply=not readonly)
    except BaseException:
        client.close()
        raise
    return client


def _open(dsn: str, base: str, *, embedded: bool, **options: Any) -> Client:
    """clickhouse-connect's client for `base`, errors turned into `StoreError`; an embedded
    store gets its private directory and holds the tightened umask until closed."""
    if embedded:
        private.hold()
    try:
        if embedded:
            private.private_dir(Path(urlsplit(base).path))
        client = clickhouse_connect.get_client(dsn=base, **options)
    except (ClickHouseError, OSError) as ex:
        if embedded:
            private.release()
        hint = ""
        text = str(ex)
        if "Cannot lock file" in text or "already running" in text:
            hint = " (another process has this chDB directory open; stop it or use a server DSN)"
        elif "already initialized with path" in text:
            hint = " (this process already has another chDB directory open; close that client)"
        raise StoreError(f"cannot open store {redact_dsn(dsn)}: {text}{hint}") from ex
    except BaseException:
        if embedded:
            private.release()
        raise
    if embedded:
        _release_on_close(client)
    return client


def _release_on_close(client: Client) -> None:
    """Make the client's close (also its ``with`` exit) end its umask hold, once."""
    close = client.close
    held = True

    def close_and_release() -> None:
        nonlocal held
        try:
            close()
        finally:
            if held:
                held = False
                private.release()

    client.close = close_and_release  # type: ignore[method-assign]


def _ensure_database(client: Client, database: str, *, create: bool = True) -> None:
    exists = client.query(
        "SELECT count() FROM system.databases WHERE name = {db:String}",
        parameters={"db": database},
    ).result_rows[0][0]
    if not exists:
        if not create:
            raise StoreError(f"database {database!r} does not exist (or this user may not see it)")
        try:
            client.command(f"CREATE DATABASE IF NOT EXISTS {quote_identifier(database)}")
        except ClickHouseError as ex:
            raise StoreError(f"cannot create database {database!r}: {ex}") from ex


def _error_code(ex: ClickHouseError) -> int | None:
    code = getattr(ex, "code", None)
    if code is None and (m := re.search(r"\bCode: (\d+)", str(ex))):
        code = int(m.group(1))
    return code


def schema_statements(path: Path = SCHEMA_PATH) -> list[str]:
    """The DDL statements of the schema file: own-line ``--`` comments dropped, split on ';'."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as ex:
        raise StoreError(f"cannot read the store schema {path}: {ex}") from ex
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    return [stmt.strip() for stmt in body.split(";") if stmt.strip()]


def ensure_schema(client: Client, *, apply: bool = True) -> None:
    """Apply the schema (idempotent) and check that existing tables have every column we use.

    ``CREATE TABLE IF NOT EXISTS`` leaves an older table alone, so a table created by an
    earlier schema would otherwise fail later, on the first insert, far from the cause.
    The schema is not applied with ``apply=False``, nor by a user the store refuses DDL
    (a least-privilege reader or writer: the admin applies it, `_NOT_ALLOWED`); the check
    runs either way, so a missing table or column still fails here.
    """
    denied = not apply
    try:
        for stmt in [] if denied else schema_statements():
            try:
                client.command(stmt)
            except ClickHouseError as ex:
                if _error_code(ex) not in _NOT_ALLOWED:
                    raise
                denied = True
                break
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
        if missing and denied:
            raise StoreError(
                f"table {table} lacks columns {', '.join(missing)} and this client may not"
                f" change the schema: apply {SCHEMA_PATH.name} as the admin user first"
            )
        if missing:
            raise StoreError(
                f"table {table} lacks columns {', '.join(missing)}: it predates the current"
                f" schema ({SCHEMA_PATH.name}); migrate it (ALTER TABLE ... ADD COLUMN)"
            )
