#!/usr/bin/env bash
# Idempotent set-up on a fresh machine: Python venv with the project and its dev tools,
# and the Kafka broker jars from Maven Central (cached in ~/.cache/cdrpipe).
set -euo pipefail
cd "$(dirname "$0")/.."
# Headless Chromium (Debian's package) for the web page's browser test; Playwright drives it
# through executable_path and never downloads a browser of its own. And
# kcat (librdkafka's command-line client) for the tests of gateways that do not partition as
# Java's client does.
missing=""
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
command -v kcat >/dev/null 2>&1 || missing="$missing kcat"
if [ -n "$missing" ] && [ "$(id -u)" = 0 ]; then
  # shellcheck disable=SC2086
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing) >/dev/null
fi
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
# The compiled hot path (setup.py): every time, so that a changed module is compiled again
# (unchanged ones are skipped); a module that does not compile runs as pure Python, unless
# CDRPIPE_REQUIRE_COMPILED=1.
python setup.py -q build_ext --inplace
python -m pipeline.kafka.broker install
