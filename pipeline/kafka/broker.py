"""A genuine local Apache Kafka broker (KRaft, one combined broker+controller node).

There is no Docker engine and no download site on the developer/CI machines, only Maven
Central, so the broker is assembled from its Maven artifacts (``deploy/kafka/pom.xml``) and run
as a plain JVM process. Used by the demo, the integration tests and ``cdrpipe`` commands::

    kafka = LocalKafka()          # env: CDRPIPE_KAFKA_HOME / _DATA / _PORT / _CONTROLLER_PORT
    kafka.start()                 # installs jars once, formats storage once, waits until ready
    ensure_topics(kafka.bootstrap)
    kafka.stop()

CLI: ``cdrpipe kafka install|start|stop|restart|status|topics|config`` (or ``python -m
pipeline.kafka.broker``).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template
from types import TracebackType

from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.commit import OffsetFetchRequest
from aiokafka.protocol.metadata import MetadataRequest

from pipeline.config import LOCAL_KAFKA_PORT, environment
from pipeline.kafka.topics import DEFAULT_PARTITIONS, TopicError, ensure_topics, run_sync
from pipeline.resources import data_path

log = logging.getLogger(__name__)

KAFKA_VERSION = "4.1.1"
HOST = "127.0.0.1"
DEFAULT_PORT = LOCAL_KAFKA_PORT
NODE_ID = 1  # node.id in server.properties.template
OFFSETS_TOPIC = "__consumer_offsets"

DEPLOY_DIR = data_path("kafka")
POM_FILE = DEPLOY_DIR / "pom.xml"
SERVER_TEMPLATE = DEPLOY_DIR / "server.properties.template"
LOG4J_CONFIG = DEPLOY_DIR / "log4j2.xml"

# Heap as asked for a dev broker on a small machine; the rest mirrors kafka-run-class.sh.
# CDRPIPE_KAFKA_JVM_OPTS (space separated) replaces the whole list.
JVM_OPTS: tuple[str, ...] = (
    "-Xms512m",
    "-Xmx1g",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-XX:MaxInlineLevel=15",
    "-Djava.awt.headless=true",
)

_MAIN_CLASS = "kafka.Kafka"
_MARKER = ".complete"  # written into libs/ only after a fully successful Maven copy


class KafkaError(RuntimeError):
    """The local broker could not be installed, formatted, started or stopped."""


def default_home(version: str = KAFKA_VERSION) -> Path:
    """Jar cache shared by every data dir/port: ``$CDRPIPE_KAFKA_HOME`` or ~/.cache/cdrpipe."""
    configured = environment().kafka_home
    if configured:
        return configured.expanduser()
    return Path.home() / ".cache" / "cdrpipe" / f"kafka-{version}"


def render_server_properties(port: int, controller_port: int, log_dirs: Path | str) -> str:
    """``deploy/kafka/server.properties.template`` with ports and storage path filled in."""
    template = Template(SERVER_TEMPLATE.read_text(encoding="utf-8"))
    return template.substitute(port=port, controller_port=controller_port, log_dirs=log_dirs)


def server_settings(
    port: int = DEFAULT_PORT,
    controller_port: int | None = None,
    log_dirs: Path | str = "/var/lib/kafka/data",
) -> dict[str, str]:
    """The broker settings as a dict, e.g. to check a docker-compose environment against."""
    text = render_server_properties(port, controller_port or port + 1, log_dirs)
    settings: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    return settings


def new_cluster_id() -> str:
    """A KRaft cluster id, as ``kafka-storage random-uuid`` makes it, without starting a JVM.

    Kafka's ids are URL-safe base64 of 16 random bytes without padding; like Kafka we avoid a
    leading '-', which command-line parsers would take for an option.
    """
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")
        if not text.startswith("-"):
            return text


def _probe_groups(partitions: int) -> list[str]:
    """One group id per __consumer_offsets partition, the broker mapping a group to partition
    ``abs(javaStringHashCode(group)) % partitions`` (ids are ASCII, so UTF-16 units = ord)."""
    groups: dict[int, str] = {}
    i = 0
    while len(groups) < partitions:
        group = f"cdrpipe-ready-probe-{i}"
        h = 0
        for ch in group:
            h = (31 * h + ord(ch)) & 0xFFFFFFFF
        h = h - (1 << 32) if h >= 1 << 31 else h
        groups.setdefault((0 if h == -(1 << 31) else abs(h)) % partitions, group)
        i += 1
    return [groups[p] for p in range(partitions)]


def _port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return f"({path} not found)"
    return "\n".join(text.splitlines()[-lines:])


@dataclass(frozen=True)
class KafkaStatus:
    """Snapshot of the local broker; ``running`` means our JVM process is alive."""

    running: bool
    pid: int | None
    listening: bool
    bootstrap: str
    version: str
    installed: bool
    formatted: bool
    data_dir: Path
    log_file: Path

    def describe(self) -> str:
        state = "running" if self.running else "stopped"
        if self.running and not self.listening:
            state += " (not listening yet)"
        return "\n".join(
            [
                f"kafka {self.version}: {state}" + (f", pid {self.pid}" if self.pid else ""),
                f"bootstrap: {self.bootstrap}",
                f"installed: {self.installed}, formatted: {self.formatted}",
                f"data dir:  {self.data_dir}",
                f"log file:  {self.log_file}",
            ]
        )


class LocalKafka:
    """One local KRaft broker: jars in ``home``, storage/config/logs/pid file in ``data_dir``.

    Every method is synchronous and idempotent (start when running, stop when stopped and
    install when installed are no-ops), so CLI commands, tests and the demo can share one
    broker without coordinating. The process is detached (own session), so it outlives the
    Python process that started it until :meth:`stop`.
    """

    def __init__(
        self,
        *,
        data_dir: Path | str | None = None,
        port: int | None = None,
        controller_port: int | None = None,
        home: Path | str | None = None,
        version: str = KAFKA_VERSION,
    ) -> None:
        self.version = version
        self.home = Path(home).expanduser() if home else default_home(version)
        env = environment()
        self.data_dir = Path(data_dir or env.kafka_data).expanduser().resolve()
        self.port = port if port is not None else env.kafka_port
        if controller_port is None:
            controller_port = env.kafka_controller_port or self.port + 1
        self.controller_port = controller_port
        if self.controller_port == self.port:
            raise ValueError("the broker and controller ports must differ")
        self._proc: subprocess.Popen[bytes] | None = None

    # -- paths -------------------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        """``host:port`` for Kafka clients (aiokafka, Faust ``kafka://`` URLs)."""
        return f"{HOST}:{self.port}"

    @property
    def libs_dir(self) -> Path:
        return self.home / "libs"

    @property
    def storage_dir(self) -> Path:
        """Kafka ``log.dirs`` (also holds the KRaft metadata log)."""
        return self.data_dir / "data"

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def log_file(self) -> Path:
        """The broker's main log (log4j2, see deploy/kafka/log4j2.xml)."""
        return self.logs_dir / "server.log"

    @property
    def console_file(self) -> Path:
        """JVM stdout/stderr: normally empty, holds crashes that happen before log4j is up."""
        return self.data_dir / "kafka.out"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "kafka.pid"

    @property
    def config_file(self) -> Path:
        return self.data_dir / "server.properties"

    # -- install -----------------------------------------------------------------------------

    def is_installed(self) -> bool:
        """True when a previous Maven copy into ``libs/`` completed for this version."""
        try:
            marker = json.loads((self.libs_dir / _MARKER).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        jars = marker.get("jars") or []
        return (
            marker.get("version") == self.version
            and bool(jars)
            and all((self.libs_dir / jar).is_file() for jar in jars)
        )

    def ensure_installed(self) -> Path:
        """Fetch the broker jars from Maven Central unless cached; return the ``libs`` dir.

        Copies into a temporary directory and renames it into place, under a file lock, so an
        interrupted or concurrent install never leaves a half-filled ``libs`` that looks usable.
        """
        if self.is_installed():
            return self.libs_dir
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.home / ".install.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.is_installed():  # another process finished while we waited
                return self.libs_dir
            mvn = shutil.which("mvn")
            if mvn is None:
                raise KafkaError("Maven (mvn) not found on PATH; it fetches the Kafka jars")
            staging = self.home / f"libs.tmp-{os.getpid()}"
            shutil.rmtree(staging, ignore_errors=True)
            cmd = [
                mvn, "-q", "-B", "-f", str(POM_FILE), "dependency:copy-dependencies",
                f"-DoutputDirectory={staging}", f"-Dkafka.version={self.version}",
            ]  # fmt: skip
            log.info("fetching Kafka %s jars into %s", self.version, self.libs_dir)
            result = subprocess.run(cmd, capture_output=True, text=True, check=False)
            jars = sorted(p.name for p in staging.glob("*.jar")) if staging.is_dir() else []
            if result.returncode != 0 or f"kafka_2.13-{self.version}.jar" not in jars:
                shutil.rmtree(staging, ignore_errors=True)
                output = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
                raise KafkaError(
                    f"fetching Kafka {self.version} with Maven failed "
                    f"(exit {result.returncode}):\n{output}"
                )
            marker = {"version": self.version, "jars": jars}
            (staging / _MARKER).write_text(json.dumps(marker, indent=1), encoding="utf-8")
            shutil.rmtree(self.libs_dir, ignore_errors=True)
            staging.rename(self.libs_dir)
        return self.libs_dir

    # -- process -----------------------------------------------------------------------------

    def _java(self) -> str:
        java_home = os.environ.get("JAVA_HOME")
        if java_home and (Path(java_home) / "bin" / "java").is_file():
            return str(Path(java_home) / "bin" / "java")
        java = shutil.which("java")
        if java is None:
            raise KafkaError("java not found (set JAVA_HOME or put java on PATH)")
        return java

    def _jvm_command(self, main_class: str, *args: str) -> list[str]:
        configured = environment().kafka_jvm_opts
        opts = configured.split() if configured else list(JVM_OPTS)
        return [
            self._java(),
            *opts,
            f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            f"-Dkafka.logs.dir={self.logs_dir}",
            "-cp",
            f"{self.libs_dir}/*",  # expanded by the JVM, not a shell
            main_class,
            *args,
        ]

    def _alive(self, pid: int) -> bool:
        """Is ``pid`` our broker JVM (not a zombie, not a recycled pid of something else)?"""
        if self._proc is not None and self._proc.pid == pid:
            # Our own child: poll() is authoritative (and reaps it). /proc/<pid>/cmdline is not,
            # right after launch: it can read empty while the java launcher is still exec'ing.
            return self._proc.poll() is None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        if stat.rsplit(")", 1)[-1].split()[0] == "Z":
            return False
        return _MAIN_CLASS.encode() in cmdline and str(self.config_file).encode() in cmdline

    def _running_pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if self._alive(pid) else None

    def _is_formatted(self) -> bool:
        return (self.storage_dir / "meta.properties").is_file()

    def _format(self) -> None:
        """Format storage once per data dir; re-formatting would wipe the cluster identity."""
        cluster_id = new_cluster_id()
        cmd = self._jvm_command(
            "kafka.tools.StorageTool", "format",
            "--cluster-id", cluster_id, "--config", str(self.config_file),
        )  # fmt: skip
        # The formatter needs no 512m heap; keep it light and quick.
        cmd = [c for c in cmd if not c.startswith(("-Xms", "-Xmx"))]
        cmd.insert(1, "-Xmx256m")
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0 or not self._is_formatted():
            raise KafkaError(
                f"formatting {self.storage_dir} failed (exit {result.returncode}):\n"
                f"{result.stdout}{result.stderr}"
            )
        (self.data_dir / "cluster.id").write_text(cluster_id + "\n", encoding="utf-8")

    def start(self, wait: bool = True, timeout: float = 90.0) -> KafkaStatus:
        """Start the broker in the background (install/format first if needed).

        With ``wait`` returns only when the broker answers a metadata request, raising
        :class:`KafkaError` with the log tail if it dies or stays silent for ``timeout`` s.
        """
        self.ensure_installed()
        pid = self._running_pid()
        if pid is not None:
            if wait:
                self.wait_ready(timeout)
            return self.status()
        for port in (self.port, self.controller_port):
            if _port_open(HOST, port):
                raise KafkaError(
                    f"port {port} on {HOST} is already in use by another process "
                    f"(not the broker of {self.data_dir}); stop it or pick another port"
                )
        for directory in (self.data_dir, self.storage_dir, self.logs_dir):
            directory.mkdir(parents=True, exist_ok=True)
        # Re-rendered on every start so port changes apply; the static quorum makes that safe.
        self.config_file.write_text(
            render_server_properties(self.port, self.controller_port, self.storage_dir),
            encoding="utf-8",
        )
        if not self._is_formatted():
            self._format()
        cmd = self._jvm_command(_MAIN_CLASS, str(self.config_file))
        with open(self.console_file, "ab") as console:
            self._proc = subprocess.Popen(
                cmd,
                cwd=self.data_dir,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # no SIGINT/SIGHUP from our terminal
            )
        self.pid_file.write_text(f"{self._proc.pid}\n", encoding="utf-8")
        log.info("started Kafka %s pid %d on %s", self.version, self._proc.pid, self.bootstrap)
        if wait:
            self.wait_ready(timeout)
        return self.status()

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Block until the broker serves metadata and committed offsets, or raise."""
        deadline = time.monotonic() + timeout
        last_error = "port not open"
        while time.monotonic() < deadline:
            pid = self._running_pid()
            if pid is None:
                raise KafkaError(
                    f"Kafka broker exited during startup; {self.log_file} ends with:\n"
                    f"{_tail(self.log_file)}\n{self.console_file}:\n{_tail(self.console_file)}"
                )
            # Probe the socket first: aiokafka logs an ERROR for every refused connection.
            if _port_open(HOST, self.port):
                try:
                    reason = run_sync(self._probe())
                except Exception as exc:  # any failure here means "not ready yet"
                    reason = f"{type(exc).__name__}: {exc}"
                if reason is None:
                    return
                last_error = reason
            time.sleep(0.25)
        raise KafkaError(
            f"Kafka broker not ready on {self.bootstrap} after {timeout:.0f}s ({last_error}); "
            f"{self.log_file} ends with:\n{_tail(self.log_file)}"
        )

    async def _probe(self) -> str | None:
        """None when ready, else why not: our node must be in the metadata and the group
        coordinator must serve committed offsets.

        The second part matters after a restart: request handling opens before the
        __consumer_offsets shards are loaded, and meanwhile OffsetFetch returns a top-level
        NOT_COORDINATOR / COORDINATOR_LOAD_IN_PROGRESS with no partitions. aiokafka 0.14
        ignores that top-level code and reports "no committed offset", so a consumer started
        then would silently reset to ``auto_offset_reset``. (ListGroups is no signal: it
        answers OK, with no groups, before the shards are loaded.) So probe one group per
        __consumer_offsets partition until every shard answers without error.
        """
        client = AIOKafkaClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000)
        try:
            await client.bootstrap()
            meta = (
                await client.send(
                    NODE_ID, MetadataRequest([OFFSETS_TOPIC], allow_auto_topic_creation=False)
                )
            ).to_object()
            if not any(b["node_id"] == NODE_ID for b in meta["brokers"]):
                return "broker not registered yet"
            topic = meta["topics"][0]
            if topic["error_code"] != 0:
                return None  # no __consumer_offsets yet: nothing to load
            for group in _probe_groups(len(topic["partitions"])):
                response = await client.send(NODE_ID, OffsetFetchRequest(group, None))
                if response.error_code:
                    return f"group coordinator not loaded (error {response.error_code})"
            return None
        finally:
            await client.close()

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the broker: SIGTERM (controlled shutdown), SIGKILL after ``timeout`` s.

        Returns False if it was not running. The data dir is kept, so a later start resumes
        with the same topics and offsets.
        """
        pid = self._running_pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)
        if not self._wait_exit(pid, timeout):
            log.warning("Kafka pid %d ignored SIGTERM for %.0fs, killing it", pid, timeout)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if not self._wait_exit(pid, 10.0):
                raise KafkaError(f"Kafka pid {pid} survived SIGKILL")
        self.pid_file.unlink(missing_ok=True)
        self._proc = None
        return True

    def _wait_exit(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._alive(pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def restart(self, timeout: float = 90.0) -> KafkaStatus:
        """Stop (if running) and start again on the same data dir."""
        self.stop()
        return self.start(timeout=timeout)

    def status(self) -> KafkaStatus:
        """Cheap snapshot (no Kafka request): process alive, port accepting connections."""
        pid = self._running_pid()
        return KafkaStatus(
            running=pid is not None,
            pid=pid,
            listening=pid is not None and _port_open(HOST, self.port),
            bootstrap=self.bootstrap,
            version=self.version,
            installed=self.is_installed(),
            formatted=self._is_formatted(),
            data_dir=self.data_dir,
            log_file=self.log_file,
        )

    def __enter__(self) -> LocalKafka:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (status: 0 running, 3 stopped, like LSB)."""
    parser = argparse.ArgumentParser(
        prog="cdrpipe kafka", description="Local single-node Kafka broker."
    )
    parser.add_argument("--port", type=int, help="client port (env CDRPIPE_KAFKA_PORT, 9092)")
    parser.add_argument("--data-dir", help="data dir (env CDRPIPE_KAFKA_DATA, ./var/kafka)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("install", help="fetch the broker jars from Maven Central (cached)")
    start = sub.add_parser("start", help="start in the background and wait until ready")
    start.add_argument("--no-wait", action="store_true", help="return right after launching")
    start.add_argument("--timeout", type=float, default=90.0)
    sub.add_parser("stop", help="stop (SIGTERM, then SIGKILL after 30 s)")
    sub.add_parser("restart", help="stop, then start on the same data dir")
    sub.add_parser("status", help="show state; exit 0 if running, 3 if not")
    topics = sub.add_parser("topics", help="create the pipeline topics (idempotent)")
    topics.add_argument("--partitions", type=int, default=DEFAULT_PARTITIONS)
    sub.add_parser("config", help="print the rendered server.properties")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    kafka = LocalKafka(data_dir=args.data_dir, port=args.port)
    try:
        if args.command == "install":
            print(f"Kafka {kafka.version} jars in {kafka.ensure_installed()}")
        elif args.command == "start":
            print(kafka.start(wait=not args.no_wait, timeout=args.timeout).describe())
        elif args.command == "stop":
            print("stopped" if kafka.stop() else "not running")
        elif args.command == "restart":
            print(kafka.restart().describe())
        elif args.command == "status":
            status = kafka.status()
            print(status.describe())
            return 0 if status.running else 3
        elif args.command == "topics":
            for topic, count in ensure_topics(kafka.bootstrap, args.partitions).items():
                print(f"{topic}\t{count} partitions")
        elif args.command == "config":
            print(render_server_properties(kafka.port, kafka.controller_port, kafka.storage_dir))
    except (KafkaError, TopicError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
