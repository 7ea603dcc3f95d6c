"""A batch worker's start: only the modules it needs, and first cycles that hold every topic
(bench/startup_bench.py measures the time; tests/integration/test_worker_startup.py runs it
on the real broker)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from aiokafka import TopicPartition

from pipeline.kafka.topics import TOPIC_CONNECT, TOPIC_END, TOPIC_START, TOPIC_TICKS
from pipeline.stream.batch import OWN_TOPICS
from pipeline.stream.fetch import FETCH_MAX_BYTES, fetch_evenly, partition_fetch_bytes

ROOT = Path(__file__).resolve().parents[2]

# Run `cdrpipe worker` up to the point where the worker would start, then list the modules.
_PROBE = """
import json, sys
import pipeline.stream.batch as batch
batch.run_batch_worker = lambda **kwargs: print(json.dumps(sorted(sys.modules)))
from pipeline.cli import main
main(["worker"])
"""

# What other commands (and the Faust engine) need and a batch worker does not.
OTHER_PACKAGES = ("faust", "mode", "clickhouse_connect", "chdb")
OTHER_MODULES = (
    "pipeline.simulate",
    "pipeline.rerate",
    "pipeline.chaos",
    "pipeline.demo",
    "pipeline.replay",
    "pipeline.api",
    "pipeline.store",
    "pipeline.stream.faust_engine",
)


def test_the_batch_worker_command_imports_nothing_of_the_other_commands():
    """Every module imported is time before the first message, on each (re)start."""
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], cwd=ROOT, capture_output=True, text=True, check=True
    )
    modules = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert "pipeline.stream.batch" in modules
    unwanted = {m for m in modules if m.split(".")[0] in OTHER_PACKAGES or m in OTHER_MODULES}
    assert sorted(unwanted) == []


def test_the_worker_command_parses_as_in_the_full_parser():
    from pipeline import cli

    argv = ["worker", "--engine", "faust", "--bootstrap", "h:1", "--name", "w3"]
    argv += ["--partitions", "12", "--idle-after", "2.5", "--web-port", "7000"]
    argv += ["--metrics-port", "9100"]
    full = vars(cli.build_parser().parse_args(argv))
    fast = vars(cli.worker_parser().parse_args(argv[1:]))
    assert full.pop("command") == "worker"
    assert full == fast
    assert vars(cli.build_parser().parse_args(["worker"])) == {
        "command": "worker",
        **vars(cli.worker_parser().parse_args([])),
    }


class Record:
    def __init__(self, offset: int) -> None:
        self.offset = offset


class BufferedConsumer:
    """aiokafka's consumer as `fetch_evenly` sees it: fetched messages buffered per
    topic-partition in the order the fetch response had them, handed out partition after
    partition (`Fetcher.fetched_records`)."""

    def __init__(self, buffered: dict[TopicPartition, int]) -> None:
        self.buffer = {tp: [Record(o) for o in range(n)] for tp, n in buffered.items()}
        self.owned = set(buffered)
        self.seeks: dict[TopicPartition, int] = {}
        self.on_getmany = lambda: None

    def assignment(self) -> set[TopicPartition]:
        return set(self.owned)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks[tp] = offset

    async def getmany(self, *partitions, timeout_ms=0, max_records=None):
        self.on_getmany()
        out = {}
        for tp in list(self.buffer):
            if partitions and tp not in partitions:
                continue
            take, self.buffer[tp] = self.buffer[tp][:max_records], self.buffer[tp][max_records:]
            if not self.buffer[tp]:
                del self.buffer[tp]
            if take:
                out[tp] = take
                max_records -= len(take)
                if max_records == 0:
                    break
        return out


def backlog(per_partition: int, partitions: int = 8) -> dict[TopicPartition, int]:
    """A fetch response on a backlog: whole topics one after the other, ends first."""
    order = (TOPIC_END, TOPIC_START, TOPIC_CONNECT, TOPIC_TICKS)
    return {TopicPartition(t, p): per_partition for t in order for p in range(partitions)}


def counts(batch) -> dict[str, int]:
    out: dict[str, int] = {}
    for tp, records in batch.items():
        out[tp.topic] = out.get(tp.topic, 0) + len(records)
    return out


def test_a_plain_getmany_fills_a_cycle_with_one_topic_and_fetch_evenly_shares_it_out():
    plain = asyncio.run(BufferedConsumer(backlog(3000)).getmany(max_records=20_000))
    assert counts(plain) == {TOPIC_END: 20_000}  # ends without their starts: no CDR

    consumer = BufferedConsumer(backlog(3000))
    batch = asyncio.run(fetch_evenly(consumer, 20_000, 200))
    assert counts(batch) == {TOPIC_START: 5000, TOPIC_CONNECT: 5000, TOPIC_END: 5000,
                             TOPIC_TICKS: 5000}  # fmt: skip
    assert [tp.topic for tp in batch][::8] == [TOPIC_START, TOPIC_CONNECT, TOPIC_END, TOPIC_TICKS]
    for records in batch.values():  # each partition's messages in order, none skipped
        assert [r.offset for r in records] == list(range(len(records)))
    again = asyncio.run(fetch_evenly(consumer, 20_000, 200))
    assert all(records[0].offset == 625 for records in again.values())


def test_what_is_left_is_taken_in_buffer_order_up_to_a_full_cycle():
    buffered = backlog(100) | {TopicPartition(TOPIC_END, 0): 30_000}
    batch = asyncio.run(fetch_evenly(BufferedConsumer(buffered), 20_000, 200))
    assert sum(counts(batch).values()) == 20_000
    assert len(batch[TopicPartition(TOPIC_END, 0)]) == 20_000 - 31 * 100


def test_less_than_a_share_buffered_is_one_call():
    consumer = BufferedConsumer(
        {TopicPartition(TOPIC_START, 0): 10, TopicPartition(TOPIC_END, 0): 5}
    )
    calls = []
    consumer.on_getmany = lambda: calls.append(1)
    batch = asyncio.run(fetch_evenly(consumer, 20_000, 200))
    assert counts(batch) == {TOPIC_START: 10, TOPIC_END: 5} and len(calls) == 1


def test_messages_of_a_new_assignment_are_put_back_not_joined_to_the_old():
    consumer = BufferedConsumer(backlog(3000))
    rebalances = [0]

    def rebalance_at_the_third_call(calls=[0]):  # noqa: B006 - a counter
        calls[0] += 1
        if calls[0] == 3:
            rebalances[0] += 1

    consumer.on_getmany = rebalance_at_the_third_call
    batch = asyncio.run(fetch_evenly(consumer, 20_000, 200, lambda: rebalances[0]))
    assert sum(counts(batch).values()) == 2 * 625  # the first two calls' messages
    (put_back,) = consumer.seeks.items()  # the third call's partition, from its first message
    assert put_back[1] == 0 and put_back[0] not in batch


def test_a_first_wait_before_the_assignment_still_shares_out():
    """The loop's first fetch waits for the group: the shares are known only afterwards."""
    consumer = BufferedConsumer(backlog(3000))
    everything, consumer.owned = consumer.owned, set()

    def assigned() -> None:
        consumer.owned = everything

    consumer.on_getmany = assigned
    batch = asyncio.run(fetch_evenly(consumer, 20_000, 200))
    assert set(counts(batch).values()) == {5000}


def test_one_fetch_holds_every_topic_partition_a_worker_can_own():
    for partitions in (1, 8, 12, 24):
        per_partition = partition_fetch_bytes(partitions)
        assert per_partition * len(OWN_TOPICS) * partitions <= FETCH_MAX_BYTES or (
            per_partition == 256 * 1024  # a floor for very many partitions
        )
    # the budget is used, not just respected: 8 partitions of every topic fill most of it
    assert partition_fetch_bytes(8) * len(OWN_TOPICS) * 8 > 0.99 * FETCH_MAX_BYTES
    assert partition_fetch_bytes(1) == 4 * 1024 * 1024  # the cap of one partition
