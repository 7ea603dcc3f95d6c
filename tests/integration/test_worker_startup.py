"""A batch worker started on a waiting backlog, on the real broker: what it does before and in
its first cycle (bench/startup_bench.py measures how long it takes)."""

from __future__ import annotations

import asyncio
import gc
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from pipeline.core.refdata import RefDataError, RefDataHolder
from pipeline.kafka.topics import INPUT_TOPICS, TOPIC_CDR
from pipeline.simulate import SimConfig, generate, produce
from pipeline.stream import background, batch
from pipeline.stream.batch import BatchWorker
from pipeline.stream.codec import cdr_from_bytes
from pipeline.stream.progress import WORKER_GROUP

from .conftest import PARTITIONS

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "config"


@pytest.fixture(autouse=True)
def no_exec(monkeypatch):
    """A worker that wants to restart itself must not replace the test process."""

    def refuse() -> None:
        raise AssertionError("the worker asked to restart itself")

    monkeypatch.setattr(batch, "restart_in_place", refuse)
    monkeypatch.setattr(background, "restart_in_place", refuse)  # the loop watchdog's


@pytest.fixture(autouse=True)
def own_gc():
    """A worker run in this process tunes the collector for itself (`GcPolicy`: a higher
    threshold, survivors frozen after each cycle); the tests after it get the process back."""
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def first_cycle(worker: BatchWorker) -> dict:
    """Run `worker` until it has processed one cycle with input messages; what that cycle
    held (messages per topic) and when it began and ended."""
    seen: dict = {}
    cycle = worker.cycle

    async def recording(fetched):
        topics = {tp.topic for tp in fetched} & set(INPUT_TOPICS)
        if not topics or seen:
            return await cycle(fetched)
        seen["began"] = time.monotonic()
        seen["topics"] = {
            t: sum(len(r) for tp, r in fetched.items() if tp.topic == t) for t in topics
        }
        await cycle(fetched)
        seen["ended"] = time.monotonic()
        worker.stopping.set()

    worker.cycle = recording  # type: ignore[method-assign]
    asyncio.run(asyncio.wait_for(worker.run(), 120))
    return seen


async def cdrs_written(bootstrap: str) -> list:
    reader = AIOKafkaConsumer(
        TOPIC_CDR,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await reader.start()
    try:
        out = []
        while batch_ := await reader.getmany(timeout_ms=1000):
            out += [cdr_from_bytes(r.value) for records in batch_.values() for r in records]
        return out
    finally:
        await reader.stop()


def produce_backlog(bootstrap: str, calls: int) -> None:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    sim = generate(SimConfig(calls=calls, seed=5, config_dir=str(CONFIG), start=start))
    asyncio.run(produce(sim.messages, bootstrap))


def test_the_first_cycle_on_a_backlog_holds_every_topic_and_emits_cdrs(broker, monkeypatch):
    """40,000 calls: each topic holds more than a cycle (20,000 messages). aiokafka hands
    out its buffer topic by topic, so the first cycle used to be starts, connects or ends
    alone - no CDR until a later cycle reached the other topics."""
    monkeypatch.setenv("CDRPIPE_CONFIG", str(CONFIG))
    produce_backlog(broker.bootstrap, 40_000)
    seen = first_cycle(BatchWorker(bootstrap=broker.bootstrap, partitions=PARTITIONS))
    assert set(seen["topics"]) == set(INPUT_TOPICS), seen["topics"]
    # the ramp's first cycle: its size at most (less when the fetches had buffered less)
    assert 0 < sum(seen["topics"].values()) <= batch.MAX_RECORDS // batch.RAMP_FROM
    cdrs = asyncio.run(cdrs_written(broker.bootstrap))
    assert len(cdrs) > 100
    assert sum(c.rated for c in cdrs) > len(cdrs) / 2  # rated with the sample decks


def test_no_message_is_rated_before_the_reference_data_is_in_force(broker, monkeypatch):
    """The reference data loads beside the broker checks, the group join and the changelog
    read now, not before them; still, outputs in doubt are re-sent and messages processed
    only once it is loaded, by the runtime built on it."""
    monkeypatch.setenv("CDRPIPE_CONFIG", str(CONFIG))
    produce_backlog(broker.bootstrap, 2_000)
    times: dict[str, float] = {}

    class SlowRefData(RefDataHolder):
        def __init__(self, *args, **kwargs) -> None:
            times["loading"] = time.monotonic()
            time.sleep(1.5)  # a large rate deck
            super().__init__(*args, **kwargs)
            times["loaded"] = time.monotonic()

    class Runtime(batch.WorkerRuntime):
        def on_assigned(self, *args, **kwargs):
            times.setdefault("resend", time.monotonic())
            return super().on_assigned(*args, **kwargs)

    monkeypatch.setattr(batch, "RefDataHolder", SlowRefData)
    monkeypatch.setattr(batch, "WorkerRuntime", Runtime)
    worker = BatchWorker(bootstrap=broker.bootstrap, partitions=PARTITIONS)
    on_assigned = worker.on_assigned

    async def recording(assigned):
        times.setdefault("assigned", time.monotonic())
        return await on_assigned(assigned)

    worker.on_assigned = recording  # type: ignore[method-assign]
    seen = first_cycle(worker)
    assert times["loading"] < times["assigned"] < times["loaded"]  # the join did not wait
    assert times["loaded"] < times["resend"] < seen["began"]
    assert worker.runtime.engine.refdata is worker.refdata
    assert isinstance(worker.refdata, SlowRefData)
    cdrs = asyncio.run(cdrs_written(broker.bootstrap))
    assert cdrs and sum(c.rated for c in cdrs) > len(cdrs) / 2


async def group_members(bootstrap: str) -> list:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if WORKER_GROUP not in {group[0] for group in await admin.list_consumer_groups()}:
            return []
        groups = await admin.describe_consumer_groups([WORKER_GROUP])
        return [member for r in groups for g in r.groups for member in g[5]]
    finally:
        await admin.close()


@pytest.mark.parametrize("load_s", [0.0, 1.5], ids=["before-the-join", "after-the-join"])
def test_malformed_reference_data_stops_the_worker_before_any_message(
    broker, tmp_path, monkeypatch, load_s
):
    class SlowRefData(RefDataHolder):
        def __init__(self, *args, **kwargs) -> None:
            time.sleep(load_s)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(batch, "RefDataHolder", SlowRefData)
    for name in ("rates.csv", "trunks.csv", "dids.csv"):
        (tmp_path / name).write_bytes((CONFIG / name).read_bytes())
    (tmp_path / "rates.csv").write_text("deck,prefix\nstandard,44\n")
    monkeypatch.setenv("CDRPIPE_CONFIG", str(tmp_path))
    produce_backlog(broker.bootstrap, 500)
    worker = BatchWorker(bootstrap=broker.bootstrap, partitions=PARTITIONS)
    with pytest.raises(RefDataError, match="rates.csv"):
        asyncio.run(worker.run())
    assert asyncio.run(cdrs_written(broker.bootstrap)) == []
    assert asyncio.run(group_members(broker.bootstrap)) == []  # not in the group, or left it


def drain(worker: BatchWorker, bootstrap: str, timeout_s: float = 180) -> None:
    """Run `worker` until it has processed every input message on the broker."""
    ends: dict = {}
    cycle = worker.cycle

    async def until_drained(fetched):
        await cycle(fetched)
        if not ends:
            parts = [TopicPartition(t, p) for t in INPUT_TOPICS for p in range(PARTITIONS)]
            ends.update(await worker.consumer.end_offsets(parts))
        if all(worker.position.get((tp.topic, tp.partition), 0) >= n for tp, n in ends.items()):
            worker.stopping.set()

    worker.cycle = until_drained  # type: ignore[method-assign]
    asyncio.run(asyncio.wait_for(worker.run(), timeout_s))


def test_a_backlog_is_processed_in_time_order_one_cdr_per_call(broker, monkeypatch):
    """40,000 calls waiting, in time order on each topic. Consumed as fetched, one topic can
    run ahead in time of another: an end processed before its call's connect emits a CDR the
    connect then revises (0 to 5,743 of these 40,000 in runs of this test, varying with fetch
    timing; bench/stream_bench.py --alignment off measures it)."""
    monkeypatch.setenv("CDRPIPE_CONFIG", str(CONFIG))
    produce_backlog(broker.bootstrap, 40_000)
    drain(BatchWorker(bootstrap=broker.bootstrap, partitions=PARTITIONS), broker.bootstrap)
    cdrs = asyncio.run(cdrs_written(broker.bootstrap))
    calls = {c.id for c in cdrs}
    assert len(calls) == 40_000
    assert len(cdrs) == len(calls)  # no CDR emitted, then revised
