-- cdrpipe ClickHouse schema for a cluster ('cdrpipe', database 'cdr').
--
-- GENERATED from deploy/clickhouse/schema.sql by pipeline/store/cluster.py: do not edit by hand.
-- Regenerate: python -m pipeline.store.cluster > deploy/clickhouse/cluster.sql
-- Other names: python -m pipeline.store.cluster --cluster NAME --database DB
--
-- Per table: <name>_local, a ReplicatedReplacingMergeTree on every node (same columns,
-- version column, partitioning, order and TTL as the single-server table), and <name>, a
-- Distributed table over it sharded by cityHash64(id), so that every revision of a call
-- lands on one shard and FINAL still shows one row per call. The application writes to
-- and reads from <name>, exactly as on a single server: point its DSN at any node,
-- http://user:password@node:8123/cdr. Apply this file (clickhouse-client
-- --multiquery < cluster.sql) BEFORE the first sink connects: the sink's own
-- CREATE TABLE IF NOT EXISTS then finds the Distributed tables and changes nothing.
-- Give the sink's user distributed_foreground_insert = 1 so an insert returns only once
-- the rows are on their shard (the sink commits Kafka offsets after the insert).
-- Needs the macros {shard} and {replica} in each node's config and a Keeper ensemble.

CREATE DATABASE IF NOT EXISTS cdr ON CLUSTER cdrpipe;

CREATE TABLE IF NOT EXISTS cdr.cdr_outbound_local ON CLUSTER cdrpipe
(
    id                   String,
    account              LowCardinality(String),
    gateway              LowCardinality(String),
    start_time           DateTime64(6, 'UTC'),
    connect_time         Nullable(DateTime64(6, 'UTC')),
    end_time             DateTime64(6, 'UTC'),
    source               String,
    cli                  Nullable(String),
    destination          String,
    duration             UInt32,
    billing_duration     Nullable(UInt32),
    disconnect_code      Nullable(UInt16),
    disconnect_reason    String,
    disconnect_initiator LowCardinality(Nullable(String)),
    status               LowCardinality(String),
    rate                 Nullable(Decimal(18, 9)),
    charged              Nullable(Decimal(18, 6)),
    cdr_type             LowCardinality(String),
    country_name         LowCardinality(String),
    network_name         LowCardinality(String),
    trunk                LowCardinality(String),
    rated                Bool,
    timed_out            Bool,
    flags                Array(LowCardinality(String)),
    revision             UInt32,
    ingested_at          DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/cdr/cdr_outbound_local', '{replica}', revision)
PARTITION BY toYYYYMMDD(start_time)
ORDER BY (account, start_time, id)
TTL toDateTime(start_time) + INTERVAL 2 MONTH DELETE
SETTINGS ttl_only_drop_parts = 1;

CREATE TABLE IF NOT EXISTS cdr.cdr_outbound ON CLUSTER cdrpipe
AS cdr.cdr_outbound_local
ENGINE = Distributed(cdrpipe, cdr, cdr_outbound_local, cityHash64(id));

CREATE TABLE IF NOT EXISTS cdr.cdr_inbound_local ON CLUSTER cdrpipe
(
    id                   String,
    account              LowCardinality(String),
    gateway              LowCardinality(String),
    start_time           DateTime64(6, 'UTC'),
    connect_time         Nullable(DateTime64(6, 'UTC')),
    end_time             DateTime64(6, 'UTC'),
    source               String,
    did                  Nullable(String),
    destination          String,
    duration             UInt32,
    disconnect_code      Nullable(UInt16),
    disconnect_reason    String,
    disconnect_initiator LowCardinality(Nullable(String)),
    status               LowCardinality(String),
    toll_free_amount     Nullable(Decimal(18, 6)),
    termination_amount   Nullable(Decimal(18, 6)),
    metered_amount       Nullable(Decimal(18, 6)),
    cdr_type             LowCardinality(String),
    country_name         LowCardinality(String),
    network_name         LowCardinality(String),
    trunk                LowCardinality(String),
    rated                Bool,
    timed_out            Bool,
    flags                Array(LowCardinality(String)),
    revision             UInt32,
    ingested_at          DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/cdr/cdr_inbound_local', '{replica}', revision)
PARTITION BY toYYYYMMDD(start_time)
ORDER BY (account, start_time, id)
TTL toDateTime(start_time) + INTERVAL 2 MONTH DELETE
SETTINGS ttl_only_drop_parts = 1;

CREATE TABLE IF NOT EXISTS cdr.cdr_inbound ON CLUSTER cdrpipe
AS cdr.cdr_inbound_local
ENGINE = Distributed(cdrpipe, cdr, cdr_inbound_local, cityHash64(id));

ALTER TABLE cdr.cdr_outbound_local ON CLUSTER cdrpipe ADD COLUMN IF NOT EXISTS flags Array(LowCardinality(String)) AFTER timed_out;
ALTER TABLE cdr.cdr_outbound ON CLUSTER cdrpipe ADD COLUMN IF NOT EXISTS flags Array(LowCardinality(String)) AFTER timed_out;

ALTER TABLE cdr.cdr_inbound_local ON CLUSTER cdrpipe ADD COLUMN IF NOT EXISTS flags Array(LowCardinality(String)) AFTER timed_out;
ALTER TABLE cdr.cdr_inbound ON CLUSTER cdrpipe ADD COLUMN IF NOT EXISTS flags Array(LowCardinality(String)) AFTER timed_out;
