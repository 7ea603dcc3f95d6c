-- cdrpipe ClickHouse schema (single server, or the embedded chDB engine).
--
-- This file is the one source of truth: pipeline/store/client.py applies it on every connect.
-- Rules that keep it applicable by code:
--   * every statement is idempotent (CREATE ... IF NOT EXISTS, ADD COLUMN IF NOT EXISTS) and ends with ';'
--   * comments sit on their own lines and start with '--'
--   * table names are unqualified: they land in the database named by the store DSN
--     (chdb:///dir?database=x, http://host:8123/x), "default" when it names none.
--
-- One table per direction: each mirrors one of the seed's two CSV layouts, so neither carries
-- columns that are always NULL for it, and every query already names a direction.
--
-- Engine: ReplacingMergeTree(revision). A CDR is idempotent by call id: re-storing the same
-- revision leaves one row, and a correction (higher revision) wins over an older one. For equal
-- revisions the row inserted last wins. Duplicates disappear at merge time, so readers use FINAL.
--
-- ORDER BY (account, start_time, id) is also the dedup key. It identifies a call because id is
-- unique, and it must not change between revisions of one call: account and start_time come from
-- the call's start event, which a correction never changes (the direction, which picks the
-- table, likewise). The same holds for the daily partition key. Account first serves the
-- per-customer queries; the daily partitions prune date ranges.
--
-- Times are DateTime64(6, 'UTC'): the same 8 bytes as millisecond precision, and they keep
-- gateway timestamps exactly as the pipeline computed with them. Money is Decimal(18, 6)
-- (charges are rounded to 6 places); the per-minute rate gets Decimal(18, 9) so that a deck
-- rate with more than 6 decimals is stored exactly (the writer refuses anything finer).
--
-- flags: why a CDR needs a second look (account_mismatch, unknown_trunk, unknown_did,
-- no_rate); empty for most calls. Tables created before the column existed get it from the
-- ALTER statements at the end (idempotent too).
--
-- Rows live two months after the call start (SPEC section 4); ttl_only_drop_parts drops whole
-- expired parts instead of rewriting them, which suits daily partitions.

CREATE TABLE IF NOT EXISTS cdr_outbound
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
ENGINE = ReplacingMergeTree(revision)
PARTITION BY toYYYYMMDD(start_time)
ORDER BY (account, start_time, id)
TTL toDateTime(start_time) + INTERVAL 2 MONTH DELETE
SETTINGS ttl_only_drop_parts = 1;

CREATE TABLE IF NOT EXISTS cdr_inbound
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
ENGINE = ReplacingMergeTree(revision)
PARTITION BY toYYYYMMDD(start_time)
ORDER BY (account, start_time, id)
TTL toDateTime(start_time) + INTERVAL 2 MONTH DELETE
SETTINGS ttl_only_drop_parts = 1;

ALTER TABLE cdr_outbound ADD COLUMN IF NOT EXISTS flags Array(LowCardinality(String)) AFTER timed_out;

ALTER TABLE cdr_inbound ADD COLUMN IF NOT EXISTS flags Array(LowCardinality(String)) AFTER timed_out;
