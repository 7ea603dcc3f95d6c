#!/usr/bin/env bash
# The main job: set up, start a local Kafka broker, workers and the store sink, stream
# simulated gateway traffic through them, then print a summary and export CSVs to out/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec cdrpipe demo "$@"
