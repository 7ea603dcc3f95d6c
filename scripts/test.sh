#!/usr/bin/env bash
# The test command: sets everything up, then runs the whole suite (unit + integration
# against a real local Kafka broker, started and stopped by the tests, and embedded chDB).
set -euo pipefail
cd "$(dirname "$0")/.."
# The suite runs the compiled hot path (setup.py), as the benchmarks and deployments do: here it
# must compile. Then the unit tests run again on the pure-Python source, which must agree.
export CDRPIPE_REQUIRE_COMPILED=${CDRPIPE_REQUIRE_COMPILED:-1}
bash scripts/setup.sh
. .venv/bin/activate
ruff check pipeline tests bench setup.py
python -m pytest -q -p no:cacheprovider "$@"
if [ $# -eq 0 ]; then
  CDRPIPE_PURE_PYTHON=1 python -m pytest -q -p no:cacheprovider tests/unit
fi
