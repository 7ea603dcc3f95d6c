# cdrpipe application image: workers, sink, API, simulator and the `cdrpipe` CLI.
#
#   docker build -t cdrpipe:local .          (docker compose builds it as cdrpipe:local)
#
# The package carries its data files (event schemas, deploy/clickhouse/schema.sql, the sample
# reference data, the Kafka templates) as package data: it is installed as a wheel would be,
# and the sources are removed after the build.

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
RUN CDRPIPE_REQUIRE_COMPILED=1 pip install . \
    && cd / && rm -rf /app/* \
    && python -c "import pipeline.core.correlate, pipeline._accel as a; assert a.compiled()"

# Defaults for a container; docker-compose.yml sets the rest (CDRPIPE_KAFKA, CDRPIPE_STORE, ...).
ENV CDRPIPE_DATA=/var/lib/cdrpipe

USER cdrpipe
CMD ["cdrpipe", "--help"]
