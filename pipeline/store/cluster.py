"""The ClickHouse cluster DDL, generated from the single-server schema.

``deploy/clickhouse/schema.sql`` is the one source of truth for the columns, keys, partitioning
and retention. A cluster needs the same tables twice over: a replicated local table on every
node (``<name>_local``, ReplicatedReplacingMergeTree) and a Distributed table with the original
name in front of them. Generating that text here, instead of keeping a hand-edited copy, means a
column added to schema.sql cannot be forgotten on the cluster side; a test checks that the
committed ``deploy/clickhouse/cluster.sql`` equals this output.

Regenerate after editing schema.sql::

    python -m pipeline.store.cluster > deploy/clickhouse/cluster.sql
    python -m pipeline.store.cluster --cluster prod --database cdr > my-cluster.sql

Decisions:

* The Distributed table keeps the single-server name (``cdr_outbound``), so the application,
  which only knows the single-server names, needs nothing but a DSN change.
* Rows are sharded by ``cityHash64(id)``: every revision of a call lands on the same shard, so
  ReplacingMergeTree deduplicates within the shard and ``FINAL`` through the Distributed table
  (applied per shard) still shows one row per call. Sharding by account would keep a customer on
  one shard but skew shards towards the biggest customers.
* Names are qualified with an explicit database: an ``ON CLUSTER`` statement runs on every node,
  and the Distributed engine needs the database of the local tables spelled out.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.store.client import SCHEMA_PATH

__all__ = ["DEFAULT_CLUSTER", "DEFAULT_DATABASE", "LOCAL_SUFFIX", "cluster_ddl", "main"]

DEFAULT_CLUSTER = "cdrpipe"
DEFAULT_DATABASE = "cdr"
LOCAL_SUFFIX = "_local"
#: ZooKeeper/Keeper path of a replicated table; {shard} and {replica} are server macros.
ZK_PATH = "/clickhouse/tables/{shard}/{database}/{table}"
SHARDING_KEY = "cityHash64(id)"

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CREATE = re.compile(
    r"CREATE TABLE IF NOT EXISTS (?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*"
    r"\((?P<columns>.*)\)\s*"
    r"ENGINE = ReplacingMergeTree\((?P<version>[A-Za-z_][A-Za-z0-9_]*)\)\s*"
    r"(?P<rest>PARTITION BY .*)",
    re.DOTALL,
)
_ADD_COLUMN = re.compile(
    r"ALTER TABLE (?P<name>[A-Za-z_][A-Za-z0-9_]*) (?P<action>ADD COLUMN IF NOT EXISTS .*)",
    re.DOTALL,
)


def _identifier(value: str, what: str) -> str:
    if not _IDENT.fullmatch(value):
        raise ValueError(f"{what} must be a plain identifier (letters, digits, _): {value!r}")
    return value


def cluster_ddl(
    schema_sql: str,
    cluster: str = DEFAULT_CLUSTER,
    database: str = DEFAULT_DATABASE,
    *,
    source: str = "deploy/clickhouse/schema.sql",
) -> str:
    """The ON CLUSTER DDL for the tables in `schema_sql` (the text of schema.sql).

    Raises ValueError for a statement it does not know how to translate, so that a new kind of
    statement in schema.sql fails the consistency test instead of silently missing on clusters.
    """
    cluster = _identifier(cluster, "cluster")
    database = _identifier(database, "database")
    statements = _statements(schema_sql)
    out = [
        f"-- cdrpipe ClickHouse schema for a cluster ({cluster!r}, database {database!r}).",
        "--",
        f"-- GENERATED from {source} by pipeline/store/cluster.py: do not edit by hand.",
        "-- Regenerate: python -m pipeline.store.cluster > deploy/clickhouse/cluster.sql",
        "-- Other names: python -m pipeline.store.cluster --cluster NAME --database DB",
        "--",
        "-- Per table: <name>_local, a ReplicatedReplacingMergeTree on every node (same columns,",
        "-- version column, partitioning, order and TTL as the single-server table), and <name>, a",
        "-- Distributed table over it sharded by cityHash64(id), so that every revision of a call",
        "-- lands on one shard and FINAL still shows one row per call. The application writes to",
        "-- and reads from <name>, exactly as on a single server: point its DSN at any node,",
        f"-- http://user:password@node:8123/{database}. Apply this file (clickhouse-client",
        "-- --multiquery < cluster.sql) BEFORE the first sink connects: the sink's own",
        "-- CREATE TABLE IF NOT EXISTS then finds the Distributed tables and changes nothing.",
        "-- Give the sink's user distributed_foreground_insert = 1 so an insert returns only once",
        "-- the rows are on their shard (the sink commits Kafka offsets after the insert).",
        "-- Needs the macros {shard} and {replica} in each node's config and a Keeper ensemble.",
        "",
        f"CREATE DATABASE IF NOT EXISTS {database} ON CLUSTER {cluster};",
    ]
    for stmt in statements:
        added = _ADD_COLUMN.fullmatch(stmt)
        if added is not None:  # a migration: the local tables first, then the Distributed one
            name, action = added["name"], added["action"]
            out += [
                "",
                f"ALTER TABLE {database}.{name}{LOCAL_SUFFIX} ON CLUSTER {cluster} {action};",
                f"ALTER TABLE {database}.{name} ON CLUSTER {cluster} {action};",
            ]
            continue
        match = _CREATE.fullmatch(stmt)
        if match is None:
            head = stmt.splitlines()[0] if stmt else stmt
            raise ValueError(f"cannot translate this schema statement for a cluster: {head!r}")
        name = match["name"]
        local = f"{name}{LOCAL_SUFFIX}"
        zk_path = ZK_PATH.replace("{database}", database).replace("{table}", local)
        columns = match["columns"].strip("\n")
        rest = match["rest"].strip()
        engine = f"ReplicatedReplacingMergeTree('{zk_path}', '{{replica}}', {match['version']})"
        out += [
            "",
            f"CREATE TABLE IF NOT EXISTS {database}.{local} ON CLUSTER {cluster}",
            "(",
            columns,
            ")",
            f"ENGINE = {engine}",
            f"{rest};",
            "",
            f"CREATE TABLE IF NOT EXISTS {database}.{name} ON CLUSTER {cluster}",
            f"AS {database}.{local}",
            f"ENGINE = Distributed({cluster}, {database}, {local}, {SHARDING_KEY});",
        ]
    return "\n".join(out) + "\n"


def _statements(schema_sql: str) -> list[str]:
    """Statements of the schema text, split like the code that applies schema.sql."""
    body = "\n".join(line for line in schema_sql.splitlines() if not line.lstrip().startswith("--"))
    return [stmt.strip() for stmt in body.split(";") if stmt.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pipeline.store.cluster``: print the cluster DDL to stdout."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.store.cluster",
        description="Print the ON CLUSTER DDL generated from deploy/clickhouse/schema.sql.",
    )
    parser.add_argument("--cluster", default=DEFAULT_CLUSTER, help="cluster name (%(default)s)")
    parser.add_argument("--database", default=DEFAULT_DATABASE, help="database (%(default)s)")
    parser.add_argument("--schema", type=Path, default=SCHEMA_PATH, help="single-server DDL")
    args = parser.parse_args(argv)
    try:
        text = cluster_ddl(args.schema.read_text(encoding="utf-8"), args.cluster, args.database)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
