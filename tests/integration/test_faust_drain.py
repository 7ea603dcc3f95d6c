"""A Faust worker catching up with a backlog longer than its commit watchdog's patience.

While the agent works through a backlog on the input topics, Faust delivers no message of
`cdrpipe.ticks`: those partitions have waiting messages and no new commit until the backlog
is gone. That must not count as a stalled partition (a restart would begin the catch-up
anew, every `CDRPIPE_STALL_S`). The watchdog's patience is 20 s here instead of 60 s, and
the backlog (~280k events) takes the worker about two minutes at ~2-2.5k events/s: five to
six times the patience, as a 5-minute catch-up is to the default 60 s. The test checks
that the situation arose (a ticks partition with waiting messages and no new commit for
longer than the old rule allowed), that the worker never restarted itself, and that every
call was stored.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pipeline.demo import Pipeline
from pipeline.kafka.topics import CO_PARTITIONED, TOPIC_CDR, TOPIC_TICKS
from pipeline.simulate import SimConfig, generate, produce
from pipeline.store.client import TABLES, connect
from pipeline.stream.progress import (
    SINK_GROUP,
    WORKER_GROUP,
    committed_offsets,
    end_offsets,
    wait_caught_up,
)
from pipeline.stream.runtime import WATCHDOG_POLL_S

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "config"
STALL_S = 20
CALLS = 110_000  # ~280k events


async def drain(pipeline: Pipeline, bootstrap: str) -> float:
    """Wait until everything is stored; meanwhile measure for how long a ticks partition
    had messages waiting and no new commit (what the watchdog used to call a stall)."""
    since: dict[tuple[str, int], tuple[int | None, float]] = {}
    longest = 0.0

    async def watch_ticks() -> None:
        nonlocal longest
        while True:
            try:
                committed = await committed_offsets(bootstrap, WORKER_GROUP)
                ends = await end_offsets(bootstrap, (TOPIC_TICKS,))
            except Exception:  # the group may not exist yet
                await asyncio.sleep(1)
                continue
            now = time.monotonic()
            for tp, end in ends.items():
                key = (tp.topic, tp.partition)
                offset = committed.get(key)
                last, changed = since.get(key, (offset, now))
                if offset != last or end <= (offset or 0):
                    changed = now
                since[key] = (offset, changed)
                longest = max(longest, now - changed)
            await asyncio.sleep(1)

    watcher = asyncio.create_task(watch_ticks())
    try:
        lags = await wait_caught_up(
            bootstrap,
            {WORKER_GROUP: CO_PARTITIONED, SINK_GROUP: (TOPIC_CDR,)},
            timeout_s=900,
            settle_s=4,
            check=pipeline.check_alive,
        )
    finally:
        watcher.cancel()
    assert all(v == 0 for v in lags.values()), lags
    return longest


def stored_calls(dsn: str) -> tuple[int, int]:
    """(rows, distinct call ids) of both directions, each call in its newest version."""
    client = connect(dsn)
    try:
        rows = ids = 0
        for table in TABLES.values():
            n, distinct = client.query(
                f"SELECT count(), uniqExact(id) FROM {table} FINAL"
            ).result_rows[0]
            rows, ids = rows + int(n), ids + int(distinct)
        return rows, ids
    finally:
        client.close()


def test_a_long_catch_up_does_not_restart_the_worker(broker, tmp_path):
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=3)
    sim = generate(SimConfig(calls=CALLS, seed=41, config_dir=str(CONFIG), start=start))
    asyncio.run(produce(sim.messages, broker.bootstrap))  # the backlog, before any worker
    store = f"chdb://{tmp_path / 'store'}"
    env = {
        "CDRPIPE_DATA": str(tmp_path / "data"),
        "CDRPIPE_CONFIG": str(CONFIG),
        "CDRPIPE_WORKER_ENGINE": "faust",
        "CDRPIPE_STALL_S": str(STALL_S),
    }
    pipeline = Pipeline(broker.bootstrap, store, tmp_path / "logs", 1, env)
    began = time.monotonic()
    pipeline.start()
    try:
        starved = asyncio.run(drain(pipeline, broker.bootstrap))
        took = time.monotonic() - began
        pipeline.check_alive()
    finally:
        pipeline.stop()
    log = (tmp_path / "logs" / "worker0.log").read_text(errors="replace")
    restarts = [line for line in log.splitlines() if "restarting this worker" in line]
    assert not restarts, f"the worker restarted itself during a {took:.0f}s catch-up: {restarts}"
    # The situation arose: the old rule (no commit for STALL_S despite waiting messages,
    # checked every WATCHDOG_POLL_S) would have restarted the worker.
    assert starved > STALL_S + WATCHDOG_POLL_S, (starved, took)
    calls = sim.expected["calls_with_start_and_end"]
    assert calls == CALLS
    assert stored_calls(store) == (calls, calls)
