# cdrpipe application image: workers, sink, API, simulator and the `cdrpipe` CLI.
#
#   docker build -t cdrpipe:local .          (docker compose builds it as cdrpipe:local)
#
# The package finds its data files (deploy/clickhouse/schema.sql, the sample reference data in
# deploy/config, the Kafka template) relative to the source tree, so the project is installed
# in editable mode from /app instead of being copied into site-packages without them.

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --system --uid 10001 --user-group --create-home --home-dir /var/lib/cdrpipe cdrpipe

WORKDIR /app
# A C compiler for the compiled hot path (setup.py); the build must succeed here, not fall back.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml ./
COPY setup.py ./
COPY pipeline/ pipeline/
COPY schemas/ schemas/
COPY deploy/ deploy/
RUN CDRPIPE_REQUIRE_COMPILED=1 pip install -e . \
    && CDRPIPE_REQUIRE_COMPILED=1 python setup.py -q build_ext --inplace

# Defaults for a container; docker-compose.yml sets the rest (CDRPIPE_KAFKA, CDRPIPE_STORE, ...).
ENV CDRPIPE_DATA=/var/lib/cdrpipe \
    CDRPIPE_CONFIG=/app/deploy/config

USER cdrpipe
CMD ["cdrpipe", "--help"]
