"""Process-wide settings from the environment, with the local-machine defaults.

The same variables configure the local scripts and docker-compose, so there is
one place where a default lives.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from pipeline.core.correlate import Settings
from pipeline.resources import data_path


def env(name: str, default: str) -> str:
    return os.environ.get(name) or default


def data_dir() -> Path:
    """Where local state lives (embedded store, worker stores): `CDRPIPE_DATA`, or `data` in
    the current directory."""
    return Path(env("CDRPIPE_DATA", "data")).resolve()


def config_dir() -> Path:
    """Reference data directory: `CDRPIPE_CONFIG`, or the samples the package carries
    (deploy/config in the source tree)."""
    return Path(env("CDRPIPE_CONFIG", str(data_path("config")))).resolve()


def kafka_bootstrap() -> str:
    return env("CDRPIPE_KAFKA", "127.0.0.1:9092")


def partitions() -> int:
    return int(env("CDRPIPE_PARTITIONS", "8"))


def deadlines() -> Settings:
    """Event-time deadlines in seconds from `CDRPIPE_MAX_CALL_S`, `_ORPHAN_WAIT_S`, `_MEMORY_S`,
    and `CDRPIPE_BILL_TIMED_OUT=1` to bill a call closed as timed out up to its deadline
    (default: stored unrated, flagged for review)."""
    return Settings(
        max_call_duration=timedelta(seconds=float(env("CDRPIPE_MAX_CALL_S", "14400"))),
        orphan_wait=timedelta(seconds=float(env("CDRPIPE_ORPHAN_WAIT_S", "3600"))),
        memory=timedelta(seconds=float(env("CDRPIPE_MEMORY_S", "86400"))),
        bill_timed_out=env("CDRPIPE_BILL_TIMED_OUT", "0").strip().lower() in ("1", "true", "yes"),
    )


def idle_after() -> float:
    """Seconds without events before a partition's event time follows the wall clock."""
    return float(env("CDRPIPE_IDLE_AFTER_S", "5"))


def worker_state() -> str:
    """`disk` (default) or `memory`: where the batch worker keeps call states
    (`CDRPIPE_WORKER_STATE`)."""
    return env("CDRPIPE_WORKER_STATE", "disk")


def worker_engine() -> str:
    """`batch` (default) or `faust`: which implementation `cdrpipe worker` runs."""
    return env("CDRPIPE_WORKER_ENGINE", "batch")


def session_timeout(local_state: bool) -> float:
    """Seconds the group waits for a silent worker (`CDRPIPE_SESSION_TIMEOUT_S`): 10 with
    local state stores and for the Faust engine (a restarted worker on local stores rejoins
    as a static member and does not wait for it); 20 with the batch worker's states in
    memory, whose long recoveries kept a busy box from heartbeating in time at 10."""
    return float(env("CDRPIPE_SESSION_TIMEOUT_S", "10" if local_state else "20"))


COMPRESSIONS = ("zstd", "lz4", "gzip", "none")


def compression() -> str | None:
    """How the workers compress what they produce (`CDRPIPE_COMPRESSION`: `zstd`, the
    default, `lz4`, `gzip` or `none`). The changelog carries every call's raw events;
    compressed, it takes a fraction of the broker's disk and of the network a rebuilding
    worker reads it over. zstd, because aiokafka compresses lz4 at level 9 (its
    high-compression mode), several times slower for a worse ratio."""
    value = env("CDRPIPE_COMPRESSION", "zstd")
    if value not in COMPRESSIONS:
        expected = ", ".join(COMPRESSIONS)
        raise ValueError(f"CDRPIPE_COMPRESSION={value!r}: expected one of {expected}")
    return None if value == "none" else value
