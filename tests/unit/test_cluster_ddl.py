"""deploy/clickhouse/cluster.sql is generated from schema.sql and says the same thing.

No cluster (Keeper, remote servers) runs here, so the statements are checked in two ways with
the embedded engine: every statement parses (``formatQuery``), and the local tables, stripped of
``ON CLUSTER`` and replication, come out with exactly the columns, keys, partitioning and TTL of
the single-server tables.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.store.client import SCHEMA_PATH, TABLES, Client, connect, schema_statements
from pipeline.store.cluster import cluster_ddl, main

CLUSTER_SQL = SCHEMA_PATH.parent / "cluster.sql"


def statements(text: str) -> list[str]:
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    return [s.strip() for s in body.split(";") if s.strip()]


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Client]:
    client = connect(f"chdb://{tmp_path / 'store'}")  # applies schema.sql to `default`
    try:
        yield client
    finally:
        client.close()


def test_committed_file_is_the_generated_text() -> None:
    expected = cluster_ddl(SCHEMA_PATH.read_text(encoding="utf-8"))
    assert CLUSTER_SQL.read_text(encoding="utf-8") == expected, (
        "deploy/clickhouse/cluster.sql is stale: "
        "python -m pipeline.store.cluster > deploy/clickhouse/cluster.sql"
    )


def test_main_prints_the_ddl(capsys) -> None:
    assert main(["--cluster", "prod", "--database", "billing"]) == 0
    out = capsys.readouterr().out
    assert out == cluster_ddl(SCHEMA_PATH.read_text(encoding="utf-8"), "prod", "billing")
    assert "ON CLUSTER prod" in out and "billing.cdr_inbound_local" in out


def test_every_table_gets_a_replicated_and_a_distributed_table() -> None:
    text = CLUSTER_SQL.read_text(encoding="utf-8")
    for table in TABLES.values():
        assert f"CREATE TABLE IF NOT EXISTS cdr.{table}_local ON CLUSTER cdrpipe" in text
        path = f"/clickhouse/tables/{{shard}}/cdr/{table}_local"
        assert f"ENGINE = ReplicatedReplacingMergeTree('{path}', '{{replica}}', revision)" in text
        assert f"ENGINE = Distributed(cdrpipe, cdr, {table}_local, cityHash64(id));" in text, table
    # one CREATE DATABASE plus two statements per table of schema.sql
    assert len(statements(text)) == 1 + 2 * len(schema_statements())


def test_refuses_what_it_cannot_translate() -> None:
    with pytest.raises(ValueError, match="cannot translate"):
        cluster_ddl("CREATE VIEW v AS SELECT 1;")
    with pytest.raises(ValueError, match="cluster"):
        cluster_ddl(SCHEMA_PATH.read_text(encoding="utf-8"), cluster="x; DROP")


def test_statements_parse_and_local_tables_match_the_schema(engine: Client) -> None:
    text = CLUSTER_SQL.read_text(encoding="utf-8")
    for stmt in statements(text):
        engine.query("SELECT formatQuery({q:String})", parameters={"q": stmt})
    # Run the local tables here as plain tables: same definition minus cluster and replication.
    engine.command("CREATE DATABASE IF NOT EXISTS cdr")
    for stmt in statements(text):
        if "ReplicatedReplacingMergeTree" in stmt:
            plain = stmt.replace(" ON CLUSTER cdrpipe", "")
            plain = re.sub(
                r"ReplicatedReplacingMergeTree\('[^']*', '\{replica\}', (\w+)\)",
                r"ReplacingMergeTree(\1)",
                plain,
            )
            engine.command(plain)

    def describe(database: str, table: str) -> tuple[object, ...]:
        columns = engine.query(
            "SELECT name, type, default_kind, default_expression FROM system.columns"
            " WHERE database = {db:String} AND table = {t:String} ORDER BY position",
            parameters={"db": database, "t": table},
        ).result_rows
        engine_, partition, sorting, primary, full = engine.query(
            "SELECT engine, partition_key, sorting_key, primary_key, engine_full"
            " FROM system.tables WHERE database = {db:String} AND name = {t:String}",
            parameters={"db": database, "t": table},
        ).result_rows[0]
        ttl = re.search(r"TTL .*?(?= SETTINGS|$)", full)
        settings = re.search(r"SETTINGS .*", full)
        assert ttl and settings, full
        return (
            [tuple(c) for c in columns],
            (engine_, partition, sorting, primary),
            ttl.group(0),
            settings.group(0),
        )

    for table in TABLES.values():
        single = describe("default", table)
        assert single[0], table
        assert describe("cdr", f"{table}_local") == single, table
