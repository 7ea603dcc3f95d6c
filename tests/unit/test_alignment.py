"""A partition's input topics released in time order (`TimeAlignment`)."""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka import TopicPartition

from pipeline.stream.alignment import TimeAlignment

START, CONNECT, END, TICKS = "sip.call.start", "sip.call.connect", "sip.call.end", "ticks"


@dataclass
class Record:
    offset: int
    timestamp: int


class Consumer:
    """What the alignment reads of a consumer: highwaters, positions, paused partitions."""

    def __init__(self) -> None:
        self.ends: dict[TopicPartition, int] = {}
        self.positions: dict[TopicPartition, int] = {}
        self.paused: set[TopicPartition] = set()

    def pause(self, *tps: TopicPartition) -> None:
        self.paused |= set(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused -= set(tps)

    def alignment(self, grace: float = 0.0) -> TimeAlignment:
        return TimeAlignment(
            (START, CONNECT, END), self.ends.get, self.positions.get, self.pause, self.resume,
            grace=grace,
        )  # fmt: skip


def records(first_offset: int, *timestamps: int) -> list[Record]:
    return [Record(first_offset + i, ts) for i, ts in enumerate(timestamps)]


def stamps(batch: dict[TopicPartition, list[Record]], tp: TopicPartition) -> list[int]:
    return [r.timestamp for r in batch.get(tp, [])]


def tp(topic: str, partition: int = 0) -> TopicPartition:
    return TopicPartition(topic, partition)


def test_messages_beyond_a_lagging_topic_wait_for_it_and_are_not_fetched_again():
    consumer = Consumer()
    consumer.ends = {tp(START): 10, tp(CONNECT): 10, tp(END): 0}
    alignment = consumer.alignment()
    owned = [tp(START), tp(CONNECT), tp(END)]
    first = {tp(START): records(0, *range(1, 11)), tp(CONNECT): records(0, 1, 2, 3)}
    out = alignment.take(first, owned, share=100)
    assert stamps(out, tp(START)) == [1, 2, 3]  # connects fetched up to 3, more waiting
    assert stamps(out, tp(CONNECT)) == [1, 2, 3]
    # the rest of the connects: everything is in hand, the kept starts come out once
    out = alignment.take({tp(CONNECT): records(3, *range(4, 11))}, owned, share=100)
    assert stamps(out, tp(START)) == list(range(4, 11))
    assert stamps(out, tp(CONNECT)) == list(range(4, 11))
    assert alignment.take({}, owned, share=100) == {}


def test_a_topic_with_nothing_more_waiting_holds_the_others_back_for_no_longer_than_grace():
    consumer = Consumer()
    consumer.ends = {tp(START): 5, tp(CONNECT): 1, tp(END): 0}
    consumer.positions = {tp(END): 0}
    alignment = consumer.alignment()
    out = alignment.take(
        {tp(START): records(0, 1, 2, 3, 4, 5), tp(CONNECT): records(0, 1)},
        [tp(START), tp(CONNECT), tp(END)],
        share=100,
    )
    assert stamps(out, tp(START)) == [1, 2, 3, 4, 5]


def test_a_lagging_topic_not_fetched_yet_holds_its_partition_back_only():
    consumer = Consumer()
    consumer.ends = {tp(START): 3, tp(END): 4, tp(START, 1): 2}
    consumer.positions = {tp(END): 0}
    alignment = consumer.alignment()
    owned = [tp(START), tp(END), tp(START, 1)]
    out = alignment.take(
        {tp(START): records(0, 1, 2, 3), tp(START, 1): records(0, 7, 8)}, owned, share=100
    )
    assert tp(START) not in out  # ends are waiting and none was fetched yet
    assert stamps(out, tp(START, 1)) == [7, 8]
    out = alignment.take({tp(END): records(0, 2, 3)}, owned, share=100)
    assert stamps(out, tp(START)) == [1, 2, 3]
    assert stamps(out, tp(END)) == [2, 3]
    # the end topic still has one waiting: it bounds by the last end taken (3)
    out = alignment.take({tp(START): records(3, 4)}, owned, share=100)
    assert tp(START) not in out


def test_a_topic_partition_holding_a_share_is_paused_until_it_is_released():
    consumer = Consumer()
    consumer.ends = {tp(START): 100, tp(END): 100}
    alignment = consumer.alignment()
    owned = [tp(START), tp(END)]
    out = alignment.take(
        {tp(START): records(0, *range(1, 51)), tp(END): records(0, 1)}, owned, share=40
    )
    assert stamps(out, tp(START)) == [1]
    assert consumer.paused == {tp(START)}  # 49 kept: the fetcher turns to the ends
    out = alignment.take({tp(END): records(1, *range(2, 31))}, owned, share=40)
    assert stamps(out, tp(START)) == list(range(2, 31))
    assert consumer.paused == set()  # 20 kept, below a share


def test_other_topics_pass_and_a_rebalance_forgets_what_was_kept():
    consumer = Consumer()
    consumer.ends = {tp(START): 10, tp(END): 10}
    alignment = consumer.alignment()
    owned = [tp(START), tp(END)]
    batch = {tp(START): records(0, 5, 6), tp(END): records(0, 1), tp(TICKS): records(0, 99)}
    out = alignment.take(batch, owned, share=1)
    assert stamps(out, tp(TICKS)) == [99]
    assert tp(START) not in out and consumer.paused == {tp(START)}
    alignment.forget()
    consumer.paused.clear()  # a new assignment is not paused
    consumer.ends.update({tp(START): 2, tp(END): 1})
    consumer.positions.update({tp(END): 1})  # the end was processed and committed
    out = alignment.take({tp(START): records(0, 5, 6)}, owned, share=1)
    assert stamps(out, tp(START)) == [5, 6]  # read again from the commit, once


def test_partitions_not_owned_now_pass_untouched():
    consumer = Consumer()
    consumer.ends = {tp(START): 10, tp(END): 10}
    alignment = consumer.alignment()
    batch = {tp(START): records(0, 5, 6), tp(END): records(0, 1)}
    out = alignment.take(batch, [], share=1)
    assert out == batch


def test_a_caught_up_topic_holds_newer_messages_back_for_the_grace_only():
    consumer = Consumer()
    consumer.ends = {tp(START): 2, tp(CONNECT): 1}
    now = [0.0]
    alignment = TimeAlignment(
        (START, CONNECT), consumer.ends.get, consumer.positions.get, consumer.pause,
        consumer.resume, grace=0.3, clock=lambda: now[0],
    )  # fmt: skip
    owned = [tp(START), tp(CONNECT)]
    out = alignment.take({tp(START): records(0, 1), tp(CONNECT): records(0, 1)}, owned, 10)
    assert stamps(out, tp(START)) == [1] and stamps(out, tp(CONNECT)) == [1]
    # starts at 2 and 3 came; the connect topic is caught up at 1: its next may be on its way
    consumer.ends[tp(START)] = 4
    out = alignment.take({tp(START): records(2, 2, 3)}, owned, 10)
    assert tp(START) not in out
    now[0] = 0.2
    consumer.ends[tp(CONNECT)] = 2
    out = alignment.take({tp(CONNECT): records(1, 2)}, owned, 10)
    assert stamps(out, tp(START)) == [2] and stamps(out, tp(CONNECT)) == [2]
    now[0] = 0.35  # the start at 3 has waited since 0: no connect came, it goes on
    assert stamps(alignment.take({}, owned, 10), tp(START)) == [3]


def test_at_most_a_cycle_is_released_and_the_cut_stays_one_in_time():
    consumer = Consumer()
    consumer.ends = {tp(START): 10, tp(END): 10, tp(START, 1): 10, tp(END, 1): 10}
    alignment = consumer.alignment()
    owned = [tp(START), tp(END), tp(START, 1), tp(END, 1)]
    batch = {t: records(0, *range(1, 11)) for t in owned}
    out = alignment.take(batch, owned, share=100, most=8)
    # 4 messages a partition, the oldest: both topics up to the same time
    assert stamps(out, tp(START)) == [1, 2] and stamps(out, tp(END)) == [1, 2]
    assert stamps(out, tp(START, 1)) == [1, 2] and stamps(out, tp(END, 1)) == [1, 2]
    out = alignment.take({}, owned, share=100)
    assert stamps(out, tp(START)) == list(range(3, 11))  # the rest, next cycle
