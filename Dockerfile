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
COPY pyproject.toml ./
COPY pipeline/ pipeline/
COPY deploy/ deploy/
RUN pip install -e .

# Defaults for a container; docker-compose.yml sets the rest (CDRPIPE_KAFKA, CDRPIPE_STORE, ...).
ENV CDRPIPE_DATA=/var/lib/cdrpipe \
    CDRPIPE_CONFIG=/app/deploy/config

USER cdrpipe
CMD ["cdrpipe", "--help"]
