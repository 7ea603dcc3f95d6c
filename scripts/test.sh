#!/usr/bin/env bash
# The test command: sets everything up, then runs the whole suite (unit + integration
# against a real local Kafka broker, started and stopped by the tests, and embedded chDB).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check pipeline tests bench
python -m pytest -q -p no:cacheprovider "$@"
