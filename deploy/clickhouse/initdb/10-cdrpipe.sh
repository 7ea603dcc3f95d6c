#!/bin/bash
# cdrpipe's schema and ClickHouse users, applied by the clickhouse/clickhouse-server image before
# the server opens to the network. docker-compose.yml mounts this folder at
# /docker-entrypoint-initdb.d and sets CLICKHOUSE_ALWAYS_RUN_INITDB_SCRIPTS=1, so every start
# applies it again (every statement is idempotent): a changed password or schema takes effect on
# a restart, and a volume created before these users existed gets them.
#
# Least privilege. The admin (CLICKHOUSE_USER, made by the image with access management) is used
# here only: it applies schema.sql (DDL) and manages the users. The sink inserts as
# CLICKHOUSE_WRITER_USER (INSERT only; it checks the schema but leaves DDL to this step), the API
# reads as CLICKHOUSE_READER_USER (SELECT only). CREATE USER OR REPLACE drops any right given by
# hand, so the GRANTs below are each user's whole rights. Passwords come from the environment
# (.env), never from this file.

cdrpipe_init() (
  set -euo pipefail
  for var in CLICKHOUSE_DB CLICKHOUSE_USER CLICKHOUSE_PASSWORD \
      CLICKHOUSE_READER_USER CLICKHOUSE_READER_PASSWORD \
      CLICKHOUSE_WRITER_USER CLICKHOUSE_WRITER_PASSWORD; do
    if [[ -z "${!var:-}" ]]; then
      echo "cdrpipe init: $var is not set" >&2
      exit 1
    fi
  done
  # These are spliced into SQL: identifiers, and passwords of URL-safe characters (the store
  # DSNs carry them too), so no value can end a quoted string.
  for var in CLICKHOUSE_DB CLICKHOUSE_READER_USER CLICKHOUSE_WRITER_USER; do
    if [[ ! "${!var}" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]]; then
      echo "cdrpipe init: $var must be a plain identifier" >&2
      exit 1
    fi
  done
  for var in CLICKHOUSE_READER_PASSWORD CLICKHOUSE_WRITER_PASSWORD; do
    if [[ ! "${!var}" =~ ^[A-Za-z0-9._~-]{16,}$ ]]; then
      echo "cdrpipe init: $var must be 16 or more of A-Z a-z 0-9 . _ ~ -" >&2
      exit 1
    fi
  done
  users="$CLICKHOUSE_USER $CLICKHOUSE_READER_USER $CLICKHOUSE_WRITER_USER"
  if [[ $(tr ' ' '\n' <<<"$users" | sort -u | wc -l) -ne 3 ]]; then
    echo "cdrpipe init: the admin, reader and writer must be three different users" >&2
    exit 1
  fi

  admin=(clickhouse client --host 127.0.0.1 --user "$CLICKHOUSE_USER" --password "$CLICKHOUSE_PASSWORD")
  "${admin[@]}" --query "CREATE DATABASE IF NOT EXISTS ${CLICKHOUSE_DB}"
  "${admin[@]}" --database "$CLICKHOUSE_DB" --multiquery < /etc/cdrpipe/clickhouse/schema.sql
  # The SQL goes through stdin: the users' passwords never show in a process list.
  "${admin[@]}" --multiquery <<SQL
CREATE USER OR REPLACE ${CLICKHOUSE_READER_USER} IDENTIFIED WITH sha256_password BY '${CLICKHOUSE_READER_PASSWORD}' DEFAULT DATABASE ${CLICKHOUSE_DB};
GRANT SELECT ON ${CLICKHOUSE_DB}.* TO ${CLICKHOUSE_READER_USER};
CREATE USER OR REPLACE ${CLICKHOUSE_WRITER_USER} IDENTIFIED WITH sha256_password BY '${CLICKHOUSE_WRITER_PASSWORD}' DEFAULT DATABASE ${CLICKHOUSE_DB};
GRANT INSERT ON ${CLICKHOUSE_DB}.* TO ${CLICKHOUSE_WRITER_USER};
SQL
  echo "cdrpipe init: schema applied to ${CLICKHOUSE_DB}; users ${CLICKHOUSE_READER_USER} (SELECT), ${CLICKHOUSE_WRITER_USER} (INSERT)"
)

cdrpipe_init
