"""The batch worker's local state stores on the real broker: a worker killed at any point of
its cycle restarts from its checkpoint and reads only the changelog's tail; a partition that
moves to another worker and back is caught up, not rebuilt; the CDRs are always replay's."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from datetime import datetime
from pathlib import Path

import pytest

from pipeline.demo import Pipeline
from pipeline.simulate import produce

from .conftest import dump_store
from .test_stream import CONFIG, assert_same_cdrs, reordered, run_replay

RECOVERED = re.compile(r"partition (\d+): (rebuilt from|caught up with) (\d+) changelog records")

# Loaded by the worker processes of a test (PYTHONPATH): kills the worker with SIGKILL at a
# given point of its `CDRPIPE_TEST_KILL_CYCLE`-th cycle that changed call states.
KILLER = """
import os, signal
from pipeline.state import checkpointed

_flush = checkpointed.DiskStates.flush
_seen = [0]


def flush(self, *args, **kwargs):
    writes = bool(self.dirty)  # a cycle that changed states (others only checkpoint)
    _seen[0] += writes
    point = os.environ.get("CDRPIPE_TEST_KILL")
    due = writes and _seen[0] == int(os.environ.get("CDRPIPE_TEST_KILL_CYCLE", "0"))
    if due and point == "before-checkpoint":  # the changelog has the cycle, the store not
        os.kill(os.getpid(), signal.SIGKILL)
    _flush(self, *args, **kwargs)
    if due and point == "before-commit":  # the store has it, the group's commit not
        os.kill(os.getpid(), signal.SIGKILL)


checkpointed.DiskStates.flush = flush
"""


@pytest.fixture(autouse=True)
def batch_engine(monkeypatch):
    monkeypatch.setenv("CDRPIPE_WORKER_ENGINE", "batch")
    monkeypatch.setenv("CDRPIPE_WORKER_STATE", "disk")


def recoveries(log: str) -> list[tuple[int, str, int]]:
    return [(int(p), how, int(n)) for p, how, n in RECOVERED.findall(log)]


def wait_for_recoveries(log: Path, timeout_s: float = 120) -> list[tuple[int, str, int]]:
    """Wait until a worker's log reports the recovery of the partitions it was given, so
    that traffic produced next is processed by it, not by the worker it joined."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = recoveries(log.read_text()) if log.exists() else []
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"{log.name}: no partition recovered in {timeout_s} s")


def pipeline_for(broker, tmp_path: Path, env: dict[str, str] | None = None) -> Pipeline:
    store = f"chdb://{tmp_path / 'stream-store'}"
    base = {
        "CDRPIPE_DATA": str(tmp_path / "data"),
        "CDRPIPE_CONFIG": str(CONFIG),
        "CDRPIPE_LOGLEVEL": "warning",
        **(env or {}),
    }
    return Pipeline(broker.bootstrap, store, tmp_path / "logs", 1, base)


def restart_worker0(pipeline: Pipeline, tmp_path: Path) -> tuple[int, dict]:
    """Start worker0 again and wait until everything is stored: where its log stood before
    the restart, and the lags."""
    mark = (tmp_path / "logs" / "worker0.log").stat().st_size
    pipeline.start_worker(0)
    return mark, pipeline.wait_stored(timeout_s=300, settle_s=4)


def caught_up(tmp_path: Path, mark: int, lags: dict) -> list[tuple[int, str, int]]:
    """After a restart of worker0 that caught everything up: its recoveries since `mark`
    (its log's size before the restart), every one from the local stores' checkpoints."""
    assert all(v == 0 for v in lags.values()), lags
    log = (tmp_path / "logs" / "worker0.log").read_bytes()[mark:].decode()
    restart = recoveries(log)
    assert restart, log[-3000:]
    assert {how for _, how, _ in restart} == {"caught up with"}, restart
    return restart


@pytest.mark.parametrize("point", ["between-cycles", "before-checkpoint", "before-commit"])
def test_a_killed_worker_restarts_from_its_checkpoint(broker, tmp_path, point):
    """SIGKILL between two cycles, after a cycle's outputs and changelog records were
    produced but before its stores were written, or after that but before its commit: the
    restarted worker (same host, same data directory) opens its stores, reads only the
    changelog records its checkpoints do not cover, rebuilds nothing, re-sends the outputs in
    doubt, and the store ends with replay's CDRs."""
    traffic = reordered(4000, 41)
    half = len(traffic.messages) // 2
    env = {}
    if point != "between-cycles":
        hooks = tmp_path / "hooks"
        hooks.mkdir()
        (hooks / "sitecustomize.py").write_text(KILLER)
        root = str(Path(__file__).resolve().parents[2])
        env = {
            "PYTHONPATH": f"{hooks}:{root}",
            "CDRPIPE_TEST_KILL": point,
            "CDRPIPE_TEST_KILL_CYCLE": "2",
        }
    pipeline = pipeline_for(broker, tmp_path)
    pipeline.start()
    try:
        asyncio.run(produce(traffic.messages[:half], broker.bootstrap))
        pipeline.wait_stored(timeout_s=300)
        if point == "between-cycles":
            pipeline.stop("worker0", sig=signal.SIGKILL)
            asyncio.run(produce(traffic.messages[half:], broker.bootstrap))
        else:
            pipeline.stop("worker0")
            pipeline.start_worker(0, env=env)  # dies in its 2nd cycle that changes states
            asyncio.run(produce(traffic.messages[half:], broker.bootstrap))
            proc = pipeline.procs["worker0"]
            assert proc.wait(120) == -signal.SIGKILL
            pipeline.procs.pop("worker0")
        mark, lags = restart_worker0(pipeline, tmp_path)
    finally:
        pipeline.stop()
    restart = caught_up(tmp_path, mark, lags)
    assert sorted(p for p, _, _ in restart) == list(range(8)), restart
    read = sum(n for _, _, n in restart)
    assert read < len(traffic.messages) // 4, restart  # the tail, not the changelog
    if point == "before-checkpoint":
        assert read > 0  # the records of the cycle the stores never got
    replay_store, _ = run_replay(tmp_path, traffic)
    assert_same_cdrs(dump_store(pipeline.store), dump_store(replay_store))


def test_a_restart_reads_a_cycle_even_after_some_input_topics_were_idle(broker, tmp_path):
    """Calls start while no connect or end arrives for a while (their topics idle), then the
    worker is killed: each cycle's commit carries its changelog mark for every input topic of
    a partition it processed, not only for those that had messages, so the restart reads a
    cycle or two, not every record written since the idle topics last had a message."""
    traffic = reordered(3000, 53)
    first = {m.key for m in traffic.messages[: len(traffic.messages) // 2]}
    done = [m for m in traffic.messages if m.key in first]
    starts = [m for m in traffic.messages if m.key not in first and m.topic == "sip.call.start"]
    rest = [m for m in traffic.messages if m.key not in first and m.topic != "sip.call.start"]
    pipeline = pipeline_for(broker, tmp_path)
    pipeline.start()
    try:
        asyncio.run(produce(done, broker.bootstrap))
        pipeline.wait_stored(timeout_s=300)
        asyncio.run(produce(starts, broker.bootstrap))
        pipeline.wait_stored(timeout_s=300, settle_s=4)
        pipeline.stop("worker0", sig=signal.SIGKILL)
        asyncio.run(produce(rest, broker.bootstrap))
        mark, lags = restart_worker0(pipeline, tmp_path)
    finally:
        pipeline.stop()
    restart = caught_up(tmp_path, mark, lags)
    assert sum(n for _, _, n in restart) < len(starts) // 4, restart
    replay_store, _ = run_replay(tmp_path, traffic)
    assert_same_cdrs(dump_store(pipeline.store), dump_store(replay_store))


def test_a_partition_moved_away_and_back_is_caught_up_not_rebuilt(broker, tmp_path):
    """worker0 owns everything; worker1 joins and takes half (rebuilt: new to its host);
    worker1 stops and worker0 gets its partitions back at once: it catches its old stores up
    with what worker1 wrote meanwhile. Same CDRs as replay."""
    traffic = reordered(6000, 43)
    third = len(traffic.messages) // 3
    pipeline = pipeline_for(broker, tmp_path)
    pipeline.start()
    try:
        asyncio.run(produce(traffic.messages[:third], broker.bootstrap))
        pipeline.wait_stored(timeout_s=300)
        pipeline.start_worker(1)
        wait_for_recoveries(tmp_path / "logs" / "worker1.log")
        asyncio.run(produce(traffic.messages[third : 2 * third], broker.bootstrap))
        pipeline.wait_stored(timeout_s=300, settle_s=4)
        mark = (tmp_path / "logs" / "worker0.log").stat().st_size
        stopped = datetime.now()
        pipeline.stop("worker1")
        asyncio.run(produce(traffic.messages[2 * third :], broker.bootstrap))
        lags = pipeline.wait_stored(timeout_s=300, settle_s=4)
    finally:
        pipeline.stop()
    assert all(v == 0 for v in lags.values()), lags
    taken = recoveries((tmp_path / "logs" / "worker1.log").read_text())
    assert taken and {how for _, how, _ in taken} == {"rebuilt from"}, taken
    back = recoveries((tmp_path / "logs" / "worker0.log").read_bytes()[mark:].decode())
    moved = {p for p, _, _ in taken}
    assert {p for p, _, _ in back} == moved, back
    assert {how for _, how, _ in back} == {"caught up with"}, back
    assert sum(n for _, _, n in back) > 0  # what worker1 wrote meanwhile
    # worker1 left the group when stopped (a static member does not by itself): worker0 had
    # its partitions back well before worker1's session would have timed out (10 s)
    log = (tmp_path / "logs" / "worker0.log").read_bytes()[mark:].decode()
    line = next(line for line in log.splitlines() if RECOVERED.search(line))
    first = datetime.strptime(line.split("]", 1)[0].lstrip("["), "%Y-%m-%d %H:%M:%S,%f")
    assert (first - stopped).total_seconds() < 8, (first, stopped)
    replay_store, _ = run_replay(tmp_path, traffic)
    assert_same_cdrs(dump_store(pipeline.store), dump_store(replay_store))


# Faust workers whose dead members the group would keep for 30 s: a partition back well
# before that was handed over, not waited for (whatever a loaded machine's start-up takes).
SLOW_SESSION = {"CDRPIPE_LOGLEVEL": "info", "CDRPIPE_SESSION_TIMEOUT_S": "30"}

TABLE_RECOVERED = re.compile(
    r"table stores: (\d+) changelog records recovered, unusable stores wiped: (.*)"
)


def test_a_killed_faust_worker_restarts_from_its_table_stores(broker, tmp_path, monkeypatch):
    """The Faust engine on its local table stores: SIGKILL while it works through traffic;
    the restarted worker (same host, same data directory) keeps its stores, reads back only
    the changelog's tail, re-sends the outputs in doubt from the stores' triggers, and the
    store ends with replay's CDRs."""
    monkeypatch.setenv("CDRPIPE_WORKER_ENGINE", "faust")
    traffic = reordered(4000, 43)
    half = len(traffic.messages) // 2
    pipeline = pipeline_for(broker, tmp_path, SLOW_SESSION)
    pipeline.start()
    try:
        asyncio.run(produce(traffic.messages[:half], broker.bootstrap))
        pipeline.wait_stored(timeout_s=300)
        asyncio.run(produce(traffic.messages[half:], broker.bootstrap))
        time.sleep(1.0)  # in the middle of the second half
        pipeline.stop("worker0", sig=signal.SIGKILL)
        relaunched = datetime.now()
        mark, lags = restart_worker0(pipeline, tmp_path)
    finally:
        pipeline.stop()
    assert all(v == 0 for v in lags.values()), lags
    log = (tmp_path / "logs" / "worker0.log").read_bytes()[mark:].decode()
    restart = TABLE_RECOVERED.findall(log)
    assert restart, log[-3000:]
    # a static member: the group handed the restarted worker its partitions once it
    # started, not after the killed one's session timed out
    line = next(line for line in log.splitlines() if TABLE_RECOVERED.search(line))
    recovered = datetime.strptime(line.split("]", 1)[0].lstrip("["), "%Y-%m-%d %H:%M:%S,%f")
    assert (recovered - relaunched).total_seconds() < 20, (recovered, relaunched)
    assert all(rebuilt.strip() == "none" for _, rebuilt in restart), restart
    assert int(restart[0][0]) < len(traffic.messages) // 4, restart  # the tail only
    replay_store, _ = run_replay(tmp_path, traffic)
    assert_same_cdrs(dump_store(pipeline.store), dump_store(replay_store))


def test_a_faust_worker_stopped_on_purpose_hands_its_partitions_over_at_once(
    broker, tmp_path, monkeypatch
):
    """A static member does not leave the group by itself when it closes: the Faust worker
    sends the leave, so the other worker gets its partitions back well before the stopped
    one's session would have timed out."""
    monkeypatch.setenv("CDRPIPE_WORKER_ENGINE", "faust")
    traffic = reordered(2000, 47)
    half = len(traffic.messages) // 2
    pipeline = pipeline_for(broker, tmp_path, SLOW_SESSION)
    pipeline.start()
    log0, log1 = (tmp_path / "logs" / f"worker{i}.log" for i in (0, 1))
    try:
        asyncio.run(produce(traffic.messages[:half], broker.bootstrap))
        pipeline.wait_stored(timeout_s=300)
        pipeline.start_worker(1)
        deadline = time.monotonic() + 120
        while not (log1.exists() and TABLE_RECOVERED.search(log1.read_text())):
            assert time.monotonic() < deadline, "worker1 got no partitions"
            time.sleep(0.2)
        mark = log0.stat().st_size
        stopped = datetime.now()
        pipeline.stop("worker1")
        deadline = time.monotonic() + 60
        while not TABLE_RECOVERED.search(log0.read_bytes()[mark:].decode()):
            assert time.monotonic() < deadline, "worker0 got nothing back"
            time.sleep(0.2)
        asyncio.run(produce(traffic.messages[half:], broker.bootstrap))
        lags = pipeline.wait_stored(timeout_s=300, settle_s=4)
    finally:
        pipeline.stop()
    assert all(v == 0 for v in lags.values()), lags
    assert "leaving the group" not in log1.read_text()  # no failed leave
    log = log0.read_bytes()[mark:].decode()
    line = next(line for line in log.splitlines() if TABLE_RECOVERED.search(line))
    back = datetime.strptime(line.split("]", 1)[0].lstrip("["), "%Y-%m-%d %H:%M:%S,%f")
    assert (back - stopped).total_seconds() < 20, (back, stopped)
    replay_store, _ = run_replay(tmp_path, traffic)
    assert_same_cdrs(dump_store(pipeline.store), dump_store(replay_store))
