"""Canonical partitions and the partitioners of the clients gateways use."""

from __future__ import annotations

import zlib

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from pipeline.core.model import Source
from pipeline.core.partitioning import (
    CanonicalPartition,
    crc32_partition,
    fnv1a_partition,
    murmur2_partition,
    partition_for,
)
from pipeline.simulate import _partitioners
from pipeline.stream.codec import as_forwarded, forwarded_from, repartition_headers

KEYS = st.binary(min_size=1, max_size=80)


@given(KEYS, st.integers(1, 64))
def test_murmur2_is_the_java_clients_choice(key, partitions):
    expected = DefaultPartitioner()(key, list(range(partitions)), list(range(partitions)))
    assert murmur2_partition(key, partitions) == expected


@given(st.text(min_size=1, max_size=40), st.integers(1, 64))
def test_the_canonical_partition_is_partition_for_of_the_id(call_id, partitions):
    raw = b'{"event":"end","id":' + f'"{call_id}"'.encode() + b',"ts":"x"}'
    if "\\" in call_id or '"' in call_id or any(ord(c) < 0x20 for c in call_id):
        return  # not a plain JSON string: call_key's own tests cover escapes
    assert CanonicalPartition(partitions)(raw) == partition_for(call_id, partitions)


def test_a_message_without_a_call_id_has_no_canonical_partition():
    canonical = CanonicalPartition(8)
    assert canonical(b"not json") is None
    assert canonical(b'{"event":"end","id":7}') is None
    assert canonical(b'{"event":"end"}') is None


def test_crc32_is_librdkafkas_consistent_partitioner():
    # librdkafka: rd_crc32(key) % partition_cnt, the zlib CRC-32 (checked against the real
    # client in tests/integration/test_partitioners.py)
    assert crc32_partition(b"123456789", 1 << 32) == 0xCBF43926  # the CRC-32 check value
    assert crc32_partition(b"call-1", 8) == zlib.crc32(b"call-1") % 8


@pytest.mark.parametrize(
    ("key", "fnv"),
    [(b"a", 0xE40C292C), (b"foobar", 0xBF9CF968), (b"call-1", None)],
)
def test_fnv1a_is_saramas_hash_partitioner(key, fnv):
    h = 0x811C9DC5
    for byte in key:
        h = ((h ^ byte) * 0x01000193) % (1 << 32)
    if fnv is not None:
        assert h == fnv  # the published FNV-1a test vectors
    signed = h - (1 << 32) if h >= 1 << 31 else h
    go_remainder = -(-signed % 10) if signed < 0 else signed % 10  # Go truncates
    assert fnv1a_partition(key, 10) == abs(go_remainder)


def test_the_simulator_partitions_per_topic():
    pick = _partitioners({"sip.call.start": "crc32", "sip.call.connect": "fnv1a"})
    key = b"gw-fra1-000000042"
    assert pick("sip.call.start", key, 8) == crc32_partition(key, 8)
    assert pick("sip.call.connect", key, 8) == fnv1a_partition(key, 8)
    assert pick("sip.call.end", key, 8) == murmur2_partition(key, 8)  # not named: Java's
    with pytest.raises(ValueError, match="unknown partitioners"):
        _partitioners("consistent")


def test_a_forwarded_messages_dead_letters_point_where_it_was_read():
    from pipeline.core.correlate import DeadLetter

    origin = Source("sip.call.end", 3, 1234)
    here = Source("cdrpipe.repartition", 5, 17)
    headers = repartition_headers(origin)
    assert forwarded_from(headers) == origin
    assert forwarded_from(dict(headers)) == origin  # as a mapping, as some clients give them
    assert forwarded_from([("other", b"x")]) is None
    other = DeadLetter(b"y", Source("cdrpipe.repartition", 5, 3), "late", "late", "c2")
    dead = [DeadLetter(b"x", here, "invalid", "invalid"), other]
    assert [d.source for d in as_forwarded(dead, here, origin)] == [origin, other.source]
    assert as_forwarded(dead, here, None) == dead


@given(st.lists(st.text(min_size=1, max_size=30), max_size=40), st.integers(1, 16))
def test_a_cycles_messages_get_the_same_partitions_hashed_together(ids, partitions):
    raws = [orjson.dumps({"event": "end", "id": i}) for i in ids] + [b"{}", b"nope"]
    one, many = CanonicalPartition(partitions), CanonicalPartition(partitions)
    assert many.many(raws) == [one(raw) for raw in raws]
    assert many.many(raws) == [one(raw) for raw in raws]  # remembered this time


@given(st.lists(st.text(min_size=1, max_size=30), max_size=40), st.integers(1, 16))
def test_an_id_and_its_messages_share_one_remembered_partition(ids, partitions):
    """The engine routes a parsed event's id, the routers a raw message: one cache for both."""
    canonical = CanonicalPartition(partitions)
    for call_id in ids:
        try:
            raw = orjson.dumps({"event": "end", "id": call_id})
        except orjson.JSONEncodeError:  # a lone surrogate: no valid event has it
            continue
        assert canonical.of_id(call_id) == partition_for(call_id, partitions)
        assert canonical(raw) == canonical.of_id(call_id)
        assert call_id.encode() in canonical.known
    assert len(canonical.known) <= len(set(ids))


def test_the_remembered_partitions_stay_bounded(monkeypatch):
    import pipeline.core.partitioning as partitioning

    monkeypatch.setattr(partitioning, "_CACHE", 4)
    canonical = CanonicalPartition(8)
    ids = [f"call-{n}" for n in range(11)]
    assert [canonical.of_id(i) for i in ids] == [partition_for(i, 8) for i in ids]
    assert len(canonical.known) <= 4
    raws = [orjson.dumps({"event": "end", "id": i}) for i in ids[:3]]
    assert canonical.many(raws) == [partition_for(i, 8) for i in ids[:3]]
    assert len(canonical.known) <= 4
