#!/usr/bin/env bash
# Idempotent set-up on a fresh machine: Python venv with the project and its dev tools,
# and the Kafka broker jars from Maven Central (cached in ~/.cache/cdrpipe).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
stamp=.venv/.cdrpipe-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  python -m pip install -q --upgrade pip
  python -m pip install -q -e '.[dev]'
  touch "$stamp"
fi
python -m pipeline.kafka.broker install
