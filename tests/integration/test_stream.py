"""Streaming end to end on the real broker: simulator -> Kafka -> worker(s) -> sink -> chDB.

The reference is `cdrpipe replay` of the simulator's own JSON Lines file: the
streamed store must hold exactly the same CDRs, field for field. Every test runs with both
worker engines (the batch worker and the Faust agent).
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pipeline.chaos import read_dlq
from pipeline.core.correlate import Deadlines
from pipeline.core.refdata import RefDataHolder
from pipeline.demo import Pipeline
from pipeline.replay import replay_file
from pipeline.simulate import SimConfig, generate, produce, write_jsonl
from pipeline.store.client import connect
from pipeline.store.writer import CdrWriter

from .conftest import PARTITIONS, dump_store, free_ports

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "config"


@pytest.fixture(params=["batch", "faust"], autouse=True)
def engine(request, monkeypatch) -> str:
    """The worker engine every process of the test runs (`cdrpipe worker --engine`)."""
    monkeypatch.setenv("CDRPIPE_WORKER_ENGINE", request.param)
    return request.param


def run_stream(
    broker,
    tmp_path: Path,
    sim,
    *,
    workers: int = 1,
    env: dict | None = None,
    scrape: dict[str, str] | None = None,
) -> str:
    """Stream `sim` through worker(s) + sink; with `scrape`, their /metrics pages are read
    into it (keys "worker", "sink") once everything is stored."""
    store = f"chdb://{tmp_path / 'stream-store'}"
    env = {"CDRPIPE_DATA": str(tmp_path / "data"), "CDRPIPE_CONFIG": str(CONFIG), **(env or {})}
    ports = {}
    if scrape is not None:
        ports = dict(zip(("worker", "sink"), free_ports(2), strict=True))
        env["CDRPIPE_METRICS_PORT"] = str(ports["worker"])
        env["CDRPIPE_SINK_METRICS_PORT"] = str(ports["sink"])
    pipeline = Pipeline(broker.bootstrap, store, tmp_path / "logs", workers, env)
    pipeline.start()
    try:
        asyncio.run(produce(sim.messages, broker.bootstrap))
        lags = pipeline.wait_stored(timeout_s=300, settle_s=4)
        pipeline.check_alive()
        for name, port in ports.items():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                scrape[name] = r.read().decode()  # type: ignore[index]
    finally:
        pipeline.stop()
    assert all(v == 0 for v in lags.values()), lags
    return store


def run_replay(tmp_path: Path, sim, settings: Deadlines | None = None) -> tuple[str, object]:
    path = tmp_path / "events.jsonl"
    write_jsonl(sim.messages, path)
    store = f"chdb://{tmp_path / 'replay-store'}"
    client = connect(store)
    try:
        summary = replay_file(
            path,
            RefDataHolder(CONFIG),
            CdrWriter(client).write,
            settings=settings,
            partitions=PARTITIONS,
        )
    finally:
        client.close()
    return store, summary


def comparable(cdrs: dict) -> dict:
    """CDRs without the revision counter (how many versions it took is not the record)."""
    return {k: dataclasses.replace(v, revision=0) for k, v in cdrs.items()}


def assert_same_cdrs(stream: dict, replay: dict) -> None:
    assert stream.keys() == replay.keys(), (
        f"only streamed: {sorted(stream.keys() - replay.keys())[:5]}, "
        f"only replayed: {sorted(replay.keys() - stream.keys())[:5]}"
    )
    a, b = comparable(stream), comparable(replay)
    diff = [k for k in a if a[k] != b[k]]
    assert not diff, f"{len(diff)} CDRs differ, e.g. {a[diff[0]]} != {b[diff[0]]}"


def recent_start() -> datetime:
    return datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=3)


def reordered(calls: int, seed: int, **extra: float):
    """The simulator's calls of the last hours, some events reordered, duplicated or late
    (and what `extra` adds, e.g. ``malformed=0.01``)."""
    cfg = SimConfig(
        calls=calls,
        seed=seed,
        config_dir=str(CONFIG),
        start=recent_start(),
        reorder=0.05,
        duplicate=0.05,
        late=0.02,
        **extra,
    )
    return generate(cfg)


@pytest.fixture(scope="module")
def reordered_sim():
    return reordered(20_000, 31)


@pytest.mark.parametrize("workers", [1, 2])
def test_stream_gives_exactly_the_replay_cdrs(broker, tmp_path, reordered_sim, workers):
    """(a) 20,000 calls with reordering, duplicates and late events; (d) two workers too."""
    stream_store = run_stream(broker, tmp_path, reordered_sim, workers=workers)
    replay_store, summary = run_replay(tmp_path, reordered_sim)
    stream, replay = dump_store(stream_store), dump_store(replay_store)
    assert len(replay) == reordered_sim.expected["calls_with_start_and_end"] == 20_000
    assert summary.duplicates == reordered_sim.expected["duplicate_messages"]
    assert_same_cdrs(stream, replay)


def test_bad_messages_go_to_dlq_and_deadlines_close_calls(broker, tmp_path):
    """(b) malformed messages -> DLQ with reasons, nothing else affected; (c) timeouts, orphans."""
    cfg = SimConfig(
        calls=6000,
        seed=32,
        config_dir=str(CONFIG),
        start=recent_start(),
        call_rate=5.0,
        reorder=0.02,
        duplicate=0.02,
        malformed=0.02,
        never_ending=0.02,
        orphan=0.02,
    )
    sim = generate(cfg)
    deadlines = {
        "CDRPIPE_MAX_CALL_S": "300",
        "CDRPIPE_ORPHAN_WAIT_S": "60",
        "CDRPIPE_IDLE_AFTER_S": "100000",
    }  # event time only: exactly like replay
    scraped: dict[str, str] = {}
    stream_store = run_stream(broker, tmp_path, sim, env=deadlines, scrape=scraped)
    settings = Deadlines(
        max_call_duration=timedelta(seconds=300), orphan_wait=timedelta(seconds=60)
    )
    replay_store, summary = run_replay(tmp_path, sim, settings)
    stream, replay = dump_store(stream_store), dump_store(replay_store)
    assert_same_cdrs(stream, replay)

    exp = sim.expected
    timed_out = [c for c in stream.values() if c.timed_out]
    # never-ending calls whose deadline event time reached are closed, the same ones as offline
    assert exp["never_ending"] // 2 < len(timed_out) == summary.timed_out <= exp["never_ending"]
    assert all(c.end_time - c.start_time == timedelta(seconds=300) for c in timed_out)

    dead = read_dlq(broker.bootstrap)
    headers = [dict(m.headers) for m in dead]
    kinds = [h["dlq.kind"].decode() for h in headers]
    malformed = sorted(m.value for m in sim.messages if m.tag.startswith("malformed"))
    invalid = [m for m, k in zip(dead, kinds, strict=True) if k == "invalid"]
    assert len(invalid) == exp["malformed_messages"] == len(malformed)
    assert sorted(m.value for m in invalid) == malformed  # original bytes, untouched
    for h in headers:
        assert h["dlq.reason"] and h["dlq.topic"].decode().startswith("sip.call.")
        assert int(h["dlq.offset"]) >= 0
    orphans = kinds.count("orphan")
    assert orphans == summary.dlq_by_kind.get("orphan", 0)
    assert exp["orphan_messages"] // 2 < orphans <= exp["orphan_messages"]
    assert len(dead) == orphans + len(invalid)

    # the metrics endpoints of worker and sink tell the same story
    worker, sink = metric_values(scraped["worker"]), metric_values(scraped["sink"])
    assert sum(v for k, v in worker.items() if k.startswith("cdrpipe_events_total")) == len(
        sim.messages
    )
    assert worker['cdrpipe_dlq_total{reason="invalid"}'] == len(invalid)
    assert worker['cdrpipe_dlq_total{reason="orphan"}'] == orphans
    assert worker["cdrpipe_orphans_total"] == orphans
    assert worker["cdrpipe_timeouts_total"] >= len(timed_out)
    assert worker["cdrpipe_cdrs_total"] >= len(stream)
    assert worker["cdrpipe_unrated_total"] >= sum(not c.rated for c in stream.values()) > 0
    assert worker["cdrpipe_cdr_emit_latency_seconds_count"] == worker["cdrpipe_cdrs_total"]
    assert "cdrpipe_open_calls" in worker
    assert sink["cdrpipe_sink_batch_rows_sum"] >= len(stream)
    assert sink["cdrpipe_sink_insert_seconds_count"] == sink["cdrpipe_sink_batch_rows_count"] > 0
    assert sink['cdrpipe_consumer_lag{topic="cdr.records"}'] == 0


def metric_values(text: str) -> dict[str, float]:
    """Prometheus text format -> {'name{labels}': value} (comments dropped)."""
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def test_idle_partitions_follow_the_wall_clock(broker, tmp_path):
    """With no more events, wall-clock time closes never-ending calls and orphans."""
    cfg = SimConfig(
        calls=300,
        seed=33,
        config_dir=str(CONFIG),
        start=recent_start(),
        call_rate=100.0,
        never_ending=0.1,
        orphan=0.1,
    )
    sim = generate(cfg)
    env = {
        "CDRPIPE_MAX_CALL_S": "20",
        "CDRPIPE_ORPHAN_WAIT_S": "10",
        "CDRPIPE_IDLE_AFTER_S": "1",
        "CDRPIPE_MEMORY_S": "3600",
    }
    store = f"chdb://{tmp_path / 'idle-store'}"
    pipeline = Pipeline(
        broker.bootstrap,
        store,
        tmp_path / "logs",
        1,
        {"CDRPIPE_DATA": str(tmp_path / "data"), **env},
    )
    pipeline.start()
    try:
        asyncio.run(produce(sim.messages, broker.bootstrap))
        # The burst spans ~3 s of event time; the wall clock has to supply the other ~20 s.
        give_up = time.monotonic() + 120
        while len(read_dlq(broker.bootstrap)) < sim.expected["orphan_messages"]:
            assert time.monotonic() < give_up, "orphans were not dead-lettered"
        time.sleep(15)
        lags = pipeline.wait_stored(timeout_s=120)
        pipeline.check_alive()
    finally:
        pipeline.stop()
    assert all(v == 0 for v in lags.values())
    stored = dump_store(store)
    assert sum(c.timed_out for c in stored.values()) == sim.expected["never_ending"]
    assert len(stored) == sim.expected["inbound"] + sim.expected["outbound"]
    assert len(read_dlq(broker.bootstrap)) == sim.expected["orphan_messages"]


def test_a_restarted_worker_recovers_its_table_from_the_changelog(broker, tmp_path, engine):
    """Half the traffic, stop the worker, the rest to a new worker: same CDRs as replay."""
    sim = reordered(6000, 34)
    half = len(sim.messages) // 2
    store = f"chdb://{tmp_path / 'stream-store'}"
    env = {
        "CDRPIPE_DATA": str(tmp_path / "data"),
        "CDRPIPE_CONFIG": str(CONFIG),
        "CDRPIPE_LOGLEVEL": "info",
    }
    pipeline = Pipeline(broker.bootstrap, store, tmp_path / "logs", 1, env)
    pipeline.start()
    try:
        asyncio.run(produce(sim.messages[:half], broker.bootstrap))
        pipeline.wait_stored(timeout_s=300)
        pipeline.stop("worker0")  # open calls now live only in the changelog
        asyncio.run(produce(sim.messages[half:], broker.bootstrap))
        pipeline.start_worker(1)
        lags = pipeline.wait_stored(timeout_s=300, settle_s=4)
    finally:
        pipeline.stop()
    assert all(v == 0 for v in lags.values()), lags
    log = (tmp_path / "logs" / "worker1.log").read_text()
    assert "Error in recovery" not in log
    if engine == "batch":  # the new worker read the open calls back, not an empty changelog
        pattern = r"(?:read (\d+) call states|rebuilt from (\d+) changelog records)"
        restored = [int(a or b) for a, b in re.findall(pattern, log)]
        assert restored and sum(restored) > 1000, restored
    else:  # a worker of another name (a new host): its table stores built from the changelog
        recovered = re.findall(r"table stores: (\d+) changelog records recovered", log)
        assert recovered and int(recovered[0]) > 1000, recovered
    replay_store, _ = run_replay(tmp_path, sim)
    assert_same_cdrs(dump_store(store), dump_store(replay_store))
