"""docker-compose.yml and the Dockerfile, checked against the project they deploy.

No Docker engine runs here, so the file is parsed and every reference in it is checked against
what exists: commands are real `cdrpipe` subcommands with valid options, CDRPIPE_* variables are
ones the code reads (with the same defaults), the Kafka settings are the local broker's
(deploy/kafka/server.properties.template), mounted files exist, the schema the code applies is in
the image, ports bind 127.0.0.1 only, and no secret is committed.
"""

from __future__ import annotations

import argparse
import re
import shlex
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from pipeline import cli, config, simulate
from pipeline.kafka import broker
from pipeline.store import client as store_client

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
PASSWORDS = ("CLICKHOUSE_PASSWORD", "CLICKHOUSE_WRITER_PASSWORD", "CLICKHOUSE_READER_PASSWORD")
TEST_ENV = {name: f"not-a-real-password-{n}" for n, name in enumerate(PASSWORDS)}
REQUIRED = {"kafka", "clickhouse", "topics", "worker", "sink", "api", "simulator"}
# Deadlines that name hosts and ports: they differ between a host process and containers.
NETWORK_KEYS = {
    "listeners",
    "advertised.listeners",
    "listener.security.protocol.map",
    "controller.quorum.voters",
}
# Environment variables of the apache/kafka image that are not server.properties entries.
KAFKA_NON_PROPERTIES = {"KAFKA_HEAP_OPTS", "KAFKA_JVM_PERFORMANCE_OPTS", "KAFKA_OPTS"}

_VAR = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\})"
)


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's variable substitution: ``${V}``, ``${V:-d}``, ``${V-d}``, ``${V:?e}``,
    ``${V?e}`` and ``$$``; raises ValueError where Compose would refuse to start."""

    def sub(m: re.Match[str]) -> str:
        if m["escaped"]:
            return "$"
        name, op, arg = m["name"], m["op"], m["arg"]
        value = env.get(name)
        if op == ":-":
            return value if value else arg
        if op == "-":
            return value if value is not None else arg
        if op == ":?" and not value or op == "?" and value is None:
            raise ValueError(f"required variable {name} is missing: {arg}")
        return value or ""

    return _VAR.sub(sub, text)


def substitute(node: Any, env: Mapping[str, str]) -> Any:
    """`interpolate` applied to every string of the parsed file, as Compose does (comments and
    keys are never substituted)."""
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [substitute(item, env) for item in node]
    if isinstance(node, dict):
        return {key: substitute(value, env) for key, value in node.items()}
    return node


def load(env: Mapping[str, str] = TEST_ENV) -> dict[str, Any]:
    return substitute(yaml.safe_load(COMPOSE.read_text(encoding="utf-8")), env)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load()


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    """The file as written, variables not substituted."""
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def app_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Services running the project's image (built from the Dockerfile)."""
    return {n: s for n, s in compose["services"].items() if "build" in s}


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def command_of(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command")
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd or []]


def package_source() -> str:
    """The package's code and its build script (setup.py reads variables of its own)."""
    files = [*(ROOT / "pipeline").rglob("*.py"), ROOT / "setup.py"]
    return "\n".join(p.read_text(encoding="utf-8") for p in files)


# --------------------------------------------------------------------------- structure


def test_services_images_and_profiles(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) >= REQUIRED, f"missing services: {REQUIRED - set(services)}"
    assert services["kafka"]["image"] == f"apache/kafka:{broker.KAFKA_VERSION}"
    assert broker.KAFKA_VERSION.startswith("4.")
    assert services["clickhouse"]["image"].startswith("clickhouse/clickhouse-server:")
    assert services["simulator"]["profiles"] == ["simulator"]
    assert {"topics", "worker", "sink", "api", "simulator"} <= set(app_services(compose))
    for name in ("topics", "simulator"):  # one-shot jobs
        assert services[name]["restart"] == "no"


def test_interpolation_is_braced_and_password_required(raw: dict[str, Any]) -> None:
    strings: list[str] = []

    def collect(node: Any) -> None:
        if isinstance(node, str):
            strings.append(node)
        elif isinstance(node, list | dict):
            for item in node.values() if isinstance(node, dict) else node:
                collect(item)

    collect(raw)
    for value in strings:
        assert not re.search(r"\$(?![{$])", value.replace("$$", "")), f"use ${{VAR}}: {value}"
    for password in PASSWORDS:
        with pytest.raises(ValueError, match=password):
            load({k: v for k, v in TEST_ENV.items() if k != password})
    # The passwords only ever come from the environment: no literal value in the file.
    ch_env = env_of(raw["services"]["clickhouse"])
    for password in PASSWORDS:
        assert re.fullmatch(rf"\$\{{{password}:\?[^}}]+\}}", ch_env[password])
    required = re.compile(r"\$\{CLICKHOUSE_(?:[A-Z]+_)?PASSWORD:\?")
    for name, service in raw["services"].items():
        for key, value in env_of(service).items():
            secretive = re.search(r"PASSWORD|SECRET|TOKEN", key)
            if secretive or re.search(r"://[^/@\s]*:[^/@\s]*@", value):  # URL with a password
                assert required.search(value), f"{name}: {key} holds a literal secret"


def test_ports_bind_localhost_only(compose: dict[str, Any]) -> None:
    published = 0
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            published += 1
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", f"{name}: {port}"
            else:
                assert str(port).startswith("127.0.0.1:"), f"{name}: {port} binds every interface"
    assert published >= 3


def test_depends_on_and_healthchecks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        for other, rule in depends.items() if isinstance(depends, dict) else []:
            assert other in services, f"{name} depends on unknown service {other}"
            condition = rule.get("condition")
            if condition == "service_healthy":
                assert "healthcheck" in services[other], f"{other} has no healthcheck"
            elif condition == "service_completed_successfully":
                assert services[other].get("restart") == "no", f"{other} is not a one-shot job"
        check = service.get("healthcheck")
        if check:
            test = check["test"]
            assert test[0] in ("CMD", "CMD-SHELL"), f"{name}: {test}"
            if test[:3] == ["CMD", "python", "-c"]:
                compile(test[3], f"<{name} healthcheck>", "exec")
    for name in ("kafka", "clickhouse", "worker", "api"):
        assert "healthcheck" in services[name], f"{name} has no healthcheck"


def test_volumes_exist(compose: dict[str, Any]) -> None:
    named = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name}: bind mount source {source} is missing"
            else:
                assert source in named, f"{name}: volume {source} is not declared"


# --------------------------------------------------------------------------- the application


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("cdrpipe has no subcommands")


def test_commands_are_real_cdrpipe_commands(compose: dict[str, Any], capsys) -> None:
    """Each command is `cdrpipe <subcommand> ...` that the CLI accepts, options included."""
    parser = cli.build_parser()
    subcommands = _subcommands(parser)
    # Subcommands that hand their arguments to a parser of their own.
    delegated: dict[str, Callable[[], argparse.ArgumentParser]] = {
        "simulate": simulate.build_parser,
    }
    for name, service in app_services(compose).items():
        cmd = command_of(service)
        assert cmd and cmd[0] == "cdrpipe", f"{name}: command must start with cdrpipe: {cmd}"
        sub = cmd[1]
        assert sub in subcommands, (
            f"{name}: `cdrpipe {sub}` is not a cdrpipe subcommand (have: {sorted(subcommands)});"
            " wire it into pipeline/cli.py"
        )
        try:
            args = parser.parse_args(cmd[1:])
            if sub in delegated and hasattr(args, "rest"):  # REMAINDER hand-over
                delegated[sub]().parse_args(args.rest)
        except SystemExit:
            pytest.fail(f"{name}: {shlex.join(cmd)} is refused: {capsys.readouterr().err}")


def test_cdrpipe_entry_point_and_image() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["scripts"]["cdrpipe"] == "pipeline.cli:main"
    docker = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim\b", docker, re.M)
    # The package data (schema.sql, the sample config, the Kafka templates, the event schemas)
    # are links into deploy/ and schemas/: the build needs them all. The image installs the
    # package as a wheel would be installed (not editable) ...
    copied = re.findall(r"^COPY\s+(\S+)\s+\S+", docker, re.M)
    assert {"pipeline/", "schemas/", "deploy/", "pyproject.toml", "setup.py"} <= set(copied)
    # ... and compiles the hot path (setup.py) or fails, not falls back to pure Python unnoticed
    assert re.search(r"^RUN CDRPIPE_REQUIRE_COMPILED=1 pip install \.\s", docker, re.M)
    schema = store_client.SCHEMA_PATH.resolve().relative_to(ROOT)
    assert schema.parts[0] == "deploy" and store_client.SCHEMA_PATH.is_file()
    assert (ROOT / "deploy" / "clickhouse" / "cluster.sql").is_file()


def test_env_vars_are_read_by_the_code(compose: dict[str, Any], raw: dict[str, Any]) -> None:
    source = package_source()
    names: set[str] = set()
    for service in compose["services"].values():
        names |= {k for k in env_of(service) if k.startswith("CDRPIPE_")}
    names |= set(re.findall(r"(CDRPIPE_[A-Z0-9_]+)=", DOCKERFILE.read_text()))
    assert {"CDRPIPE_KAFKA", "CDRPIPE_STORE", "CDRPIPE_CONFIG", "CDRPIPE_PARTITIONS"} <= names
    settings = {f"CDRPIPE_{field.upper()}" for field in config.Environment.model_fields}
    for name in sorted(names):
        read = name in settings or re.search(rf"[\"']{name}[\"']", source)
        assert read, f"{name} is set but no code reads it"


def test_env_defaults_match_the_code(monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``${CDRPIPE_X:-default}`` in the file has the default the code has."""
    text = COMPOSE.read_text(encoding="utf-8")
    defaults = dict(re.findall(r"\$\{(CDRPIPE_[A-Z0-9_]+):-([^}]*)\}", text))
    for name in defaults:
        monkeypatch.delenv(name, raising=False)
    d = config.deadlines()
    code: dict[str, float] = {
        "CDRPIPE_PARTITIONS": config.partitions(),
        "CDRPIPE_MAX_CALL_S": d.max_call_duration.total_seconds(),
        "CDRPIPE_ORPHAN_WAIT_S": d.orphan_wait.total_seconds(),
        "CDRPIPE_MEMORY_S": d.memory.total_seconds(),
        "CDRPIPE_IDLE_AFTER_S": config.idle_after(),
    }
    assert set(code) <= set(defaults)
    for name, value in code.items():
        assert float(defaults[name]) == value, f"{name}: compose {defaults[name]}, code {value}"


def test_store_dsn_points_at_the_clickhouse_service(compose: dict[str, Any]) -> None:
    ch = env_of(compose["services"]["clickhouse"])
    # the users the clickhouse container creates (tests/unit/test_least_privilege.py)
    for name, role in (("sink", "WRITER"), ("api", "READER")):
        dsn = urlsplit(env_of(compose["services"][name])["CDRPIPE_STORE"])
        assert (dsn.scheme, dsn.hostname, dsn.port) == ("http", "clickhouse", 8123), name
        assert dsn.username == ch[f"CLICKHOUSE_{role}_USER"], name
        assert dsn.password == ch[f"CLICKHOUSE_{role}_PASSWORD"], name
        assert dsn.path.strip("/") == ch["CLICKHOUSE_DB"]
    for name, service in app_services(compose).items():
        env = env_of(service)
        if "CDRPIPE_CONFIG" in env:  # the reference data is mounted where the code looks
            mounts = {v.split(":")[1]: v.split(":")[0] for v in service.get("volumes", [])}
            assert mounts.get(env["CDRPIPE_CONFIG"]) == "./deploy/config", name


# --------------------------------------------------------------------------- Kafka


def kafka_properties(env: Mapping[str, str]) -> dict[str, str]:
    """server.properties entries from the apache/kafka image's KAFKA_* variables."""
    props: dict[str, str] = {}
    for key, value in env.items():
        if not key.startswith("KAFKA_") or key in KAFKA_NON_PROPERTIES:
            continue
        name = key[len("KAFKA_") :].replace("___", "\0").replace("__", "\1").replace("_", ".")
        props[name.replace("\0", "-").replace("\1", "_").lower()] = value
    return props


def listeners(value: str) -> dict[str, int]:
    out = {}
    for item in value.split(","):
        name, _, address = item.partition("://")
        out[name] = int(address.rsplit(":", 1)[1])
    return out


def test_kafka_settings_match_the_local_broker(compose: dict[str, Any]) -> None:
    env = env_of(compose["services"]["kafka"])
    props = kafka_properties(env)
    want = broker.server_settings(port=9092, controller_port=9093, log_dirs="/var/lib/kafka/data")
    assert set(props) == set(want), (
        f"missing: {sorted(set(want) - set(props))}, extra: {sorted(set(props) - set(want))}"
    )
    for key in sorted(set(want) - NETWORK_KEYS):
        assert props[key] == want[key], f"{key}: compose {props[key]!r}, template {want[key]!r}"
    assert props["auto.create.topics.enable"] == "false"
    assert props["process.roles"] == "broker,controller"

    # Listeners: the template's names on the template's ports, plus a host-only listener.
    mine, theirs = listeners(props["listeners"]), listeners(want["listeners"])
    assert {k: mine[k] for k in theirs} == theirs
    advertised = listeners(props["advertised.listeners"])
    assert set(advertised) <= set(mine)
    assert advertised["PLAINTEXT"] == theirs["PLAINTEXT"]
    protocols = dict(p.split(":") for p in props["listener.security.protocol.map"].split(","))
    template_protocols = dict(
        p.split(":") for p in want["listener.security.protocol.map"].split(",")
    )
    assert template_protocols.items() <= protocols.items() and set(mine) == set(protocols)
    node, _, address = props["controller.quorum.voters"].partition("@")
    want_node, _, want_address = want["controller.quorum.voters"].partition("@")
    assert node == want_node == str(broker.NODE_ID) == props["node.id"]
    assert address.rsplit(":", 1)[1] == want_address.rsplit(":", 1)[1]
    published = {p.rsplit(":", 1)[1] for p in compose["services"]["kafka"].get("ports", [])}
    extra = set(advertised) - set(theirs)
    assert {str(advertised[name]) for name in extra} <= published

    # Clients use the advertised container listener.
    bootstrap = f"kafka:{advertised['PLAINTEXT']}"
    for name, service in app_services(compose).items():
        assert env_of(service).get("CDRPIPE_KAFKA") == bootstrap, name
        cmd = command_of(service)
        if "--bootstrap" in cmd:
            assert cmd[cmd.index("--bootstrap") + 1] == bootstrap, name


def test_kafka_heap_matches_the_local_broker(compose: dict[str, Any]) -> None:
    heap = env_of(compose["services"]["kafka"])["KAFKA_HEAP_OPTS"].split()
    assert heap == [o for o in broker.JVM_OPTS if o.startswith(("-Xms", "-Xmx"))]
    xms = next(o for o in heap if o.startswith("-Xms"))
    size = int(xms[4:-1]) * {"m": 1, "g": 1024}[xms[-1].lower()]
    assert size >= 512


def test_topics_job_uses_the_pipeline_partition_count(compose: dict[str, Any]) -> None:
    cmd = command_of(compose["services"]["topics"])
    assert cmd[:2] == ["cdrpipe", "topics"]
    partitions = cmd[cmd.index("--partitions") + 1]
    for name in ("worker", "topics"):
        assert env_of(compose["services"][name])["CDRPIPE_PARTITIONS"] == partitions


def test_grafana_dashboard_queries_only_metrics_the_code_defines():
    import json
    import re

    from prometheus_client.metrics import MetricWrapperBase

    from pipeline import metrics

    names = {
        collected.name
        for value in vars(metrics).values()
        if isinstance(value, MetricWrapperBase)
        for collected in value.describe()
    }
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "cdrpipe-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {
        re.sub(r"_(total|bucket|sum|count)$", "", m)
        for e in exprs
        for m in re.findall(r"cdrpipe_[a-z_]+", e)
    }
    assert used and used <= names, used - names
