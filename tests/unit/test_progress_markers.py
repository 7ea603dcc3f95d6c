"""Progress markers: what a worker that forwards messages tells the partitions it forwards to,
and what a partition does with it (`WorkerRuntime.progress`, `Correlator.upstream`)."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

from pipeline.core.refdata import RefDataHolder
from pipeline.kafka.topics import TOPIC_CONNECT, TOPIC_END, TOPIC_START
from pipeline.stream.codec import progress_from_bytes, progress_to_bytes
from pipeline.stream.runtime import WorkerRuntime

from .test_correlate import SETTINGS, T0, held

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "config"


def runtime(idle_after: float = 60.0) -> WorkerRuntime:
    states: dict = {}
    rt = WorkerRuntime(RefDataHolder(CONFIG), states, SETTINGS, 4, idle_after)  # type: ignore[arg-type]
    rt.assigned = {0, 1}
    return rt


def read(rt: WorkerRuntime, partition: int, minutes: float) -> None:
    for topic in (TOPIC_START, TOPIC_CONNECT, TOPIC_END):
        rt.arrived(topic, partition, T0 + timedelta(minutes=minutes))


def test_a_worker_that_forwards_nothing_sends_no_marker():
    rt = runtime()
    read(rt, 0, 5)
    read(rt, 1, 5)
    assert rt.progress(force=True) is None  # gateways on murmur2: no marker traffic


def test_a_forwarding_worker_tells_each_owned_partition_and_then_falls_silent():
    rt = runtime(idle_after=60.0)
    read(rt, 0, 5)
    rt.arrived(TOPIC_START, 1, T0 + timedelta(minutes=9))  # starts only: no watermark yet
    rt.forwarded(0)
    rt.forwarded(1)
    marker = rt.progress(force=True)
    assert marker is not None
    # partition 1 has no watermark: it is left out, and the receivers keep waiting for it
    assert progress_from_bytes(marker) == {0: T0 + timedelta(minutes=5)}
    assert rt.progress() is None  # at most every PROGRESS_EVERY_S
    rt.idle_after = 0.0  # nothing forwarded within idle_after from here on
    time.sleep(0.01)
    assert progress_from_bytes(rt.progress(force=True) or b"{}") == {0: None, 1: None}
    assert rt.progress(force=True) is None  # said once, then silence


def test_markers_round_trip_and_hold_a_receiving_partition():
    report = {0: T0 + timedelta(minutes=5, microseconds=7), 3: None}
    assert progress_from_bytes(progress_to_bytes(report)) == report
    rt = runtime()
    engine = rt.engine
    engine.correlator.expect_upstream(2, 4)  # a forwarded message came to partition 2
    marker = progress_to_bytes({0: T0 + timedelta(minutes=30), 1: None})
    rt.on_progress(marker, 2, 10)
    assert engine.correlator.watermark(2) is None  # partitions 2 and 3 have not told
    rt.on_progress(progress_to_bytes({2: T0 + timedelta(hours=1), 3: None}), 2, 11)
    for kind in ("start", "connect", "end"):  # the partition's own clock reaches 03:00
        engine.correlator.process(held(kind, "x", at=3 * 3600), 2)
    assert engine.correlator.watermark(2) == T0 + timedelta(minutes=30)
    rt.on_progress(progress_to_bytes({0: None}), 2, 12)  # nothing more on its way from 0
    assert engine.correlator.watermark(2) == T0 + timedelta(hours=1)
