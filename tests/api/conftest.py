"""One embedded store for the whole API test package, built once:

* realistic traffic: simulated events run through `cdrpipe replay` (accounts acc-1001..1004);
* the hand-computed fixed dataset (accounts kpi-a, kpi-b, evil, kpi-f), written with CdrWriter;
* 200,000 synthetic rows of account ``bulk`` spread over 55 days, inserted in SQL, so that
  deep pages have something to be deep in.

Package scope, and the client is closed at the end: chDB allows one data directory per process,
and the other test packages open their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from pipeline.api.app import create_app
from pipeline.api.auth import create_key
from pipeline.cli import main as cli_main
from pipeline.simulate import SimConfig, generate, write_jsonl
from pipeline.store.client import Client, connect
from pipeline.store.writer import CdrWriter
from tests.api.dataset import fixed_cdrs

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "config"
SIM_CALLS = 4000
BULK_ROWS = 200_000
BULK_DAYS = 55


@dataclass(frozen=True)
class Env:
    dsn: str
    client: Client
    keys_path: Path
    keys: dict[str, str]  # who -> key: admin, acc-1001, kpi-a, kpi-b, kpi-f
    window: tuple[datetime, datetime]  # covers all simulated and fixed CDRs

    def params(self, **extra: Any) -> dict[str, Any]:
        """Query parameters for the recent window plus `extra` (None values dropped)."""
        base = {"from": self.window[0].isoformat(), "to": self.window[1].isoformat()}
        base.update(extra)
        return {k: v for k, v in base.items() if v is not None}


def insert_bulk(client: Client, rows: int, account: str, days: int) -> None:
    """`rows` outbound CDRs of `account`, evenly spread over the last `days` days."""
    span_us = days * 86_400 * 1_000_000
    client.command(
        f"""
        INSERT INTO cdr_outbound (id, account, gateway, start_time, connect_time, end_time,
            source, cli, destination, duration, billing_duration, disconnect_code,
            disconnect_reason, disconnect_initiator, status, rate, charged, cdr_type,
            country_name, network_name, trunk, rated, timed_out, revision)
        SELECT concat('bulk-', toString(number)), {{account:String}}, 'gw-bulk',
            base + toIntervalMicrosecond(number * {span_us // rows}) AS st,
            NULL, st + toIntervalSecond(5), concat('1', toString(2025550000 + number % 1000)),
            concat('1', toString(2025550000 + number % 1000)), '442071230000', 0, 0, 486,
            'Busy Here', 'destination', 'busy', toDecimal64('0.0123', 9),
            toDecimal64('0', 6), 'International', 'United Kingdom', 'Fixed', 'BT1',
            true, false, 1
        FROM (SELECT number, toDateTime64(now() - {days * 86_400}, 6, 'UTC') AS base
              FROM numbers({rows}))
        """,
        parameters={"account": account},
    )


@pytest.fixture(scope="package")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("api")
    dsn = f"chdb://{root / 'store'}"
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    sim = generate(
        SimConfig(
            calls=SIM_CALLS,
            seed=4242,
            config_dir=str(CONFIG),
            start=now - timedelta(days=3),
            call_rate=SIM_CALLS / (2 * 86_400),  # two days of traffic
            never_ending=0.01,
            duplicate=0.02,
        )
    )
    events = root / "events.jsonl"
    write_jsonl(sim.messages, events)
    assert cli_main(["replay", str(events), "--config", str(CONFIG), "--store", dsn]) == 0

    keys_path = root / "keys.json"
    keys = {
        "admin": create_key(keys_path, admin=True, label="tests")[0],
        **{a: create_key(keys_path, account=a)[0] for a in ("acc-1001", "kpi-a", "kpi-b", "kpi-f")},
    }
    client = connect(dsn)
    try:
        CdrWriter(client).write(fixed_cdrs())
        insert_bulk(client, BULK_ROWS, "bulk", BULK_DAYS)
        yield Env(dsn, client, keys_path, keys, (now - timedelta(days=4), now + timedelta(days=1)))
    finally:
        client.close()


@pytest.fixture(scope="package")
def app(env: Env) -> FastAPI:
    return create_app(env.client, env.keys_path)


@pytest.fixture(scope="package")
def api(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as client:
        yield client


def auth(key: str) -> dict[str, str]:
    return {"X-API-Key": key}
