#!/usr/bin/env sh
# Thin wrapper: deploy/kafka/kafka.sh start|stop|restart|status|install|topics [--partitions N]|config
# All logic lives in pipeline/kafka/broker.py; see deploy/kafka/README.md.
set -e
root="$(cd "$(dirname "$0")/../.." && pwd)"
if [ -z "$PYTHON" ]; then
  if [ -x "$root/.venv/bin/python" ]; then PYTHON="$root/.venv/bin/python"; else PYTHON=python3; fi
fi
cd "$root"
exec "$PYTHON" -m pipeline.kafka.broker "$@"
