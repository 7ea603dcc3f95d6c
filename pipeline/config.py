"""Every setting `cdrpipe` reads from the environment, in one typed object (`Environment`,
pydantic-settings): `CDRPIPE_<FIELD>`, an empty value counting as unset. The same variables
configure the local scripts and docker-compose, so a default lives here only; README's
environment table is checked against this class (tests/unit/test_environment.py).

Read with `environment()`, which reads the environment anew each time: cheap, and tests and
supervisors change it between runs. The functions below derive what several modules need.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline.core.correlate import (
    DEFAULT_MAX_CALL_DURATION,
    DEFAULT_MEMORY,
    DEFAULT_ORPHAN_WAIT,
    Deadlines,
)
from pipeline.core.partitioning import DEFAULT_PARTITIONS
from pipeline.resources import data_path

COMPRESSIONS = ("zstd", "lz4", "gzip", "none")
LOCAL_KAFKA_PORT = 9092  # the local broker's client port, and the default bootstrap's
Compression = Literal["zstd", "lz4", "gzip", "none"]


class Environment(BaseSettings):
    """The `CDRPIPE_*` variables, their types and defaults. The description of each is the
    one README's environment table gives."""

    model_config = SettingsConfigDict(env_prefix="CDRPIPE_", env_ignore_empty=True, frozen=True)

    # Where things are
    kafka: str = Field(f"127.0.0.1:{LOCAL_KAFKA_PORT}", description="Kafka bootstrap servers")
    partitions: int = Field(
        DEFAULT_PARTITIONS, ge=1, description="partitions of the pipeline's topics"
    )
    data: Path = Field(
        Path("data"),
        description="local state: embedded store, worker stores (relative to the working dir)",
    )
    config: Path | None = Field(
        None, description="reference data directory (unset: the sample data bundled with cdrpipe)"
    )
    store: str | None = Field(
        None, description="ClickHouse DSN (unset: the embedded chDB store in <data>/store)"
    )
    api_keys: Path | None = Field(None, description="API keys file (unset: <data>/api-keys.json)")
    # The HTTP service (`cdrpipe serve`)
    api_allowed_hosts: str | None = Field(
        None,
        description="API: more Host names it answers to, comma separated (always: localhost,"
        " 127.0.0.1, ::1 and the address a request came in on)",
    )
    api_key_concurrency: int = Field(
        4, ge=1, description="API: requests one key may have running at once (exports included)"
    )
    api_key_rate: float = Field(
        50, gt=0, description="API: store queries a second one key may make on average"
    )
    api_key_burst: int = Field(
        500, ge=1, description="API: store queries one key may make in a burst above that rate"
    )
    api_header_timeout_s: float = Field(
        10, gt=0, description="API: seconds a client has to send a request's line and headers"
    )
    api_body_timeout_s: float = Field(
        10, gt=0, description="API: seconds a request body may pause between two reads"
    )
    api_keep_alive_s: float = Field(
        5, gt=0, description="API: seconds an idle keep-alive connection stays open"
    )
    api_max_connections: int = Field(
        200, ge=1, description="API: connections and requests at once; more get 503"
    )
    # Billing deadlines (event time)
    max_call_s: float = Field(
        DEFAULT_MAX_CALL_DURATION.total_seconds(),
        gt=0,
        description="a call with no end this long after its start is closed as timed out",
    )
    orphan_wait_s: float = Field(
        DEFAULT_ORPHAN_WAIT.total_seconds(),
        gt=0,
        description="how long a connect or end waits for its start before it is an orphan",
    )
    memory_s: float = Field(
        DEFAULT_MEMORY.total_seconds(),
        gt=0,
        description="how long a finished call is remembered for corrections and duplicates",
    )
    bill_timed_out: bool = Field(
        False,
        description="1: bill a call closed as timed out up to its deadline; 0: store it unrated",
    )
    # Workers
    worker_engine: Literal["batch", "faust"] = Field("batch", description="`cdrpipe worker` engine")
    worker_state: Literal["disk", "memory"] = Field(
        "disk", description="batch engine: call states in local RocksDB stores or in memory"
    )
    table_store: str = Field(
        "disk://",
        description="Faust engine: table store, `disk://` (local RocksDB stores) or `memory://`",
    )
    compression: Compression = Field(
        "zstd", description="how the workers compress what they produce, the changelog included"
    )
    idle_after_s: float = Field(
        5,
        gt=0,
        description="seconds without events before a partition's event time follows the wall clock",
    )
    time_aligned: bool = Field(
        True, description="batch engine: 0 processes inputs as fetched instead of in time order"
    )
    align_grace_s: float = Field(
        0.3,
        ge=0,
        description="batch engine: how long a caught-up input topic may hold back the others",
    )
    session_timeout_s: float | None = Field(
        None,
        gt=0,
        description="seconds the group waits for a silent worker (unset: 10; 20, states in memory)",
    )
    stall_s: float = Field(
        60,
        gt=0,
        description="a worker with waiting messages and no commit for that long restarts itself",
    )
    broker_wait_s: float = Field(
        300, ge=0, description="how long a starting worker waits for an unreachable broker"
    )
    metrics_port: int | None = Field(
        None, description="worker: serve Prometheus /metrics on 127.0.0.1:PORT"
    )
    sink_metrics_port: int | None = Field(
        None, description="sink: serve Prometheus /metrics on 127.0.0.1:PORT"
    )
    sink_hold_file: Path | None = Field(
        None,
        description="while this file exists the sink holds its inserts (backlog stays in Kafka)",
    )
    loglevel: str = Field("warning", description="log level of every command")
    log_json: bool = Field(False, description="1: log as JSON lines")
    # The local broker (`cdrpipe kafka`)
    kafka_home: Path | None = Field(
        None, description="local broker: jar cache (unset: ~/.cache/cdrpipe)"
    )
    kafka_data: Path = Field(
        Path("var/kafka"),
        description="local broker: data directory (relative: to the current directory)",
    )
    kafka_port: int = Field(LOCAL_KAFKA_PORT, description="local broker: client port")
    kafka_controller_port: int | None = Field(
        None, description="local broker: controller port (unset: the client port + 1)"
    )
    kafka_jvm_opts: str | None = Field(
        None, description="local broker: JVM options, space separated, replacing the defaults"
    )
    # Read where this class cannot be imported (by `pipeline._accel` before anything, by
    # setup.py, by the chaos suite's hook in the sink); listed for the table.
    pure_python: bool = Field(
        False, description="1: run (and build) everything from source, nothing compiled"
    )
    require_compiled: bool = Field(
        False, description="build only: 1 makes a failed compile fail the build (CI)"
    )
    chaos_sink_kill: Path | None = Field(
        None,
        description="chaos suite only: the file telling the sink where to kill itself",
    )


class SettingError(ValueError):
    """A `CDRPIPE_*` variable holds a value of the wrong type or out of range."""


def environment() -> Environment:
    """The settings as the environment gives them now; `SettingError` names each variable
    whose value is wrong, with the value and what was expected."""
    try:
        return Environment()
    except ValidationError as exc:
        problems = [
            f"CDRPIPE_{'_'.join(map(str, e['loc'])).upper()}={e['input']!r}: {e['msg']}"
            for e in exc.errors()
        ]
        raise SettingError("; ".join(problems)) from None


def data_dir() -> Path:
    """Where local state lives (embedded store, worker stores), absolute."""
    return environment().data.resolve()


def config_dir() -> Path:
    """The reference data directory, absolute: `CDRPIPE_CONFIG`, or the samples the package
    carries (deploy/config in the source tree)."""
    return (environment().config or data_path("config")).resolve()


def kafka_bootstrap() -> str:
    return environment().kafka


def partitions() -> int:
    return environment().partitions


def deadlines() -> Deadlines:
    """The event-time deadlines (`CDRPIPE_MAX_CALL_S`, `_ORPHAN_WAIT_S`, `_MEMORY_S`,
    `_BILL_TIMED_OUT`)."""
    env = environment()
    return Deadlines(
        max_call_duration=timedelta(seconds=env.max_call_s),
        orphan_wait=timedelta(seconds=env.orphan_wait_s),
        memory=timedelta(seconds=env.memory_s),
        bill_timed_out=env.bill_timed_out,
    )


def idle_after() -> float:
    """Seconds without events before a partition's event time follows the wall clock."""
    return environment().idle_after_s


def worker_state() -> str:
    """`disk` or `memory`: where the batch worker keeps call states."""
    return environment().worker_state


def worker_engine() -> str:
    """`batch` or `faust`: which implementation `cdrpipe worker` runs."""
    return environment().worker_engine


def session_timeout(local_state: bool) -> float:
    """Seconds the group waits for a silent worker (`CDRPIPE_SESSION_TIMEOUT_S`): 10 with
    local state stores and for the Faust engine (a restarted worker on local stores rejoins
    as a static member and does not wait for it); 20 with the batch worker's states in
    memory, whose long recoveries kept a busy box from heartbeating in time at 10."""
    configured = environment().session_timeout_s
    if configured is not None:
        return configured
    return 10.0 if local_state else 20.0


def compression() -> str | None:
    """How the workers compress what they produce (`CDRPIPE_COMPRESSION`), None for `none`.
    The changelog carries every call's raw events; compressed, it takes a fraction of the
    broker's disk and of the network a rebuilding worker reads it over. zstd by default,
    because aiokafka compresses lz4 at level 9 (its high-compression mode), several times
    slower for a worse ratio."""
    value = environment().compression
    return None if value == "none" else value
