"""Which partition a call belongs to, whatever partition its events arrived on.

A call's events are correlated, its deadlines run and its state is kept on one partition: the
*canonical* one, ``murmur2(call id)`` as Kafka's Java client (and aiokafka, and librdkafka's
``murmur2_random``) picks it. Gateways are not ours, and most non-Java clients pick another:
librdkafka's default ``consistent_random`` takes the CRC32 of the key, Go's Sarama FNV-1a, and
a gateway may key by something else or not at all. A worker therefore reads the call id from
each message (`call_key`), and forwards a message that arrived off its canonical partition to
that partition of the reroute topic (`pipeline.kafka.topics.TOPIC_REROUTE`, co-partitioned
with the inputs), where the call's owner processes it (Kafka Streams' repartition topics).

The producer side is here too (`PRODUCER_PARTITIONERS`), so the simulator and the tests can
send what any gateway would.
"""

from __future__ import annotations

import random
import struct
import zlib
from collections.abc import Callable

import numpy as np
import orjson

from pipeline.core.events import MAX_MESSAGE_BYTES

DEFAULT_PARTITIONS = 8  # of the pipeline's topics, and the partitions a replay routes calls to


_BLOCKS: dict[int, Callable[[bytes], tuple[int, ...]]] = {}  # n -> unpack n LE uint32 blocks


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash (as in the Java client's default partitioner)."""
    length = len(data)
    m = 0x5BD1E995
    h = (0x9747B28C ^ length) & 0xFFFFFFFF  # seed ^ length
    nblocks = length >> 2
    if nblocks:
        blocks = _BLOCKS.get(nblocks)
        if blocks is None:
            blocks = _BLOCKS[nblocks] = struct.Struct(f"<{nblocks}I").unpack_from
        for k in blocks(data):
            k = (k * m) & 0xFFFFFFFF
            k ^= k >> 24
            h = ((h * m) & 0xFFFFFFFF) ^ ((k * m) & 0xFFFFFFFF)
    tail = length & 3
    if tail:
        base = nblocks << 2
        if tail == 3:
            h ^= data[base + 2] << 16
        if tail >= 2:
            h ^= data[base + 1] << 8
        h ^= data[base]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def partition_for(call_id: str, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for this call id: the routing rule.
    Not remembered here; `CanonicalPartition` is the one cache of it."""
    return murmur2_partition(call_id.encode(), partitions)


__all__ = [
    "PRODUCER_PARTITIONERS",
    "CanonicalPartition",
    "call_key",
    "crc32_partition",
    "fnv1a_partition",
    "murmur2",
    "murmur2_partition",
    "partition_for",
    "partitions_for",
]


def call_key(raw: bytes) -> bytes | None:
    """The UTF-8 bytes of the message's top-level string ``id``, read as `parse_event` reads
    it (orjson; of duplicate keys the last), so ``murmur2(key)`` is the hash `partition_for`
    takes. For a message that cannot be a valid event, None or some key: it touches no call
    state, so any partition will do.

    Most messages are read without parsing them: in JSON without a backslash, every ``"id"``
    is a string equal to id (a string cannot hold a bare quote, and a closing quote is never
    followed by a letter), so if there is exactly one and it is followed by ``:"``, it is the
    only key id, and its value runs to the next quote. If that key is nested, the message has
    no top-level id and is invalid. Anything else (escapes, spaces, several ids) goes through
    orjson (tests/unit/test_replay_parallel.py compares the two on generated objects)."""
    if len(raw) > MAX_MESSAGE_BYTES:
        return None  # refused before it is parsed
    at = raw.find(b'"id":"')
    if at >= 0 and b"\\" not in raw and raw.count(b'"id"') == 1:
        end = raw.find(b'"', at + 6)
        if end >= 0:
            return raw[at + 6 : end]
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if type(data) is dict:
        value = data.get("id")
        if type(value) is str:
            try:
                return value.encode()
            except UnicodeEncodeError:  # a lone surrogate: refused by orjson already
                return None
    return None


_M = np.uint32(0x5BD1E995)


def partitions_for(keys: list[bytes], partitions: int) -> list[int]:
    """``(murmur2(key) & 0x7FFFFFFF) % partitions`` of each key (Kafka's default partitioner),
    computed with numpy for all keys of a length at once, an order of magnitude cheaper than
    `murmur2` in Python (tests/unit/test_replay_parallel.py compares the two)."""
    out = [0] * len(keys)
    by_length: dict[int, list[int]] = {}
    for i, key in enumerate(keys):
        by_length.setdefault(len(key), []).append(i)
    for length, at in by_length.items():
        data = np.frombuffer(b"".join([keys[i] for i in at]), dtype=np.uint8)
        data = data.reshape(len(at), length)
        h = np.full(len(at), (0x9747B28C ^ length) & 0xFFFFFFFF, dtype=np.uint32)
        nblocks = length >> 2
        if nblocks:
            blocks = np.ascontiguousarray(data[:, : nblocks * 4]).view("<u4")
            for j in range(nblocks):
                k = blocks[:, j] * _M
                k ^= k >> np.uint32(24)
                h = (h * _M) ^ (k * _M)
        tail, base = length & 3, nblocks << 2
        if tail:
            if tail == 3:
                h ^= data[:, base + 2].astype(np.uint32) << np.uint32(16)
            if tail >= 2:
                h ^= data[:, base + 1].astype(np.uint32) << np.uint32(8)
            h ^= data[:, base].astype(np.uint32)
            h = h * _M
        h ^= h >> np.uint32(13)
        h = h * _M
        h ^= h >> np.uint32(15)
        for i, value in zip(at, ((h & np.uint32(0x7FFFFFFF)) % partitions).tolist(), strict=True):
            out[i] = value
    return out


def murmur2_partition(key: bytes, partitions: int) -> int:
    """Kafka's Java default partitioner (also aiokafka's, and librdkafka's murmur2_random)."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def crc32_partition(key: bytes, partitions: int) -> int:
    """librdkafka's default ``consistent_random`` for a keyed message: CRC32 of the key."""
    return zlib.crc32(key) % partitions


def fnv1a_partition(key: bytes, partitions: int) -> int:
    """Sarama's (Go) default hash partitioner: 32-bit FNV-1a as a signed int32, modulo the
    count, negated when negative (Go's remainder keeps the dividend's sign)."""
    h = 0x811C9DC5
    for byte in key:
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    signed = h - (1 << 32) if h & 0x80000000 else h
    return abs(signed) % partitions


def random_partition(key: bytes, partitions: int) -> int:
    """A producer that ignores the key (round robin, sticky or random)."""
    return random.randrange(partitions)


PRODUCER_PARTITIONERS: dict[str, Callable[[bytes, int], int]] = {
    "murmur2": murmur2_partition,
    "crc32": crc32_partition,
    "fnv1a": fnv1a_partition,
    "random": random_partition,
}

_CACHE = 1 << 18  # call ids remembered before the cache starts afresh


class CanonicalPartition:
    """The canonical partition of each call, remembered per call id: the one cache of
    `partition_for`, used by the engine (a parsed event's id) and by the routers of raw
    messages (a worker's misrouted check, the parallel replay). A call's events share an id,
    so each id is hashed once while it is remembered; after `_CACHE` ids the cache starts
    afresh, so memory stays bounded. Keys are the id's UTF-8 bytes, as `call_key` reads them."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self.known: dict[bytes, int] = {}

    def of_id(self, call_id: str) -> int:
        """``partition_for(call_id, self.partitions)``, remembered."""
        key = call_id.encode()
        partition = self.known.get(key)
        if partition is None:
            partition = self._hash(key)
        return partition

    def __call__(self, raw: bytes) -> int | None:
        """The message's canonical partition; None for a message without a call id: it
        touches no call state and is dead-lettered wherever it is read."""
        key = call_key(raw)
        if key is None:
            return None
        partition = self.known.get(key)
        if partition is None:
            partition = self._hash(key)
        return partition

    def many(self, raws: list[bytes]) -> list[int | None]:
        """`self(raw)` of each, the ids not remembered hashed together (`partitions_for`)."""
        known = self.known
        keys = [call_key(raw) for raw in raws]
        fresh = list({k for k in keys if k is not None and k not in known})
        if fresh:
            if len(known) + len(fresh) > _CACHE:
                known.clear()
                fresh = list({k for k in keys if k is not None})
            known.update(zip(fresh, partitions_for(fresh, self.partitions), strict=True))
        return [None if k is None else known[k] for k in keys]

    def _hash(self, key: bytes) -> int:
        known = self.known
        if len(known) >= _CACHE:
            known.clear()
        partition = known[key] = murmur2_partition(key, self.partitions)
        return partition
