"""The shared engine: bytes in, rated CDRs and dead letters out, order-independent."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.correlate import Deadlines
from pipeline.core.engine import Engine
from pipeline.core.model import Source
from pipeline.core.refdata import RefDataHolder

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "config"
T0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def refdata() -> RefDataHolder:
    return RefDataHolder(CONFIG)


def msg(kind: str, call_id: str, at: float, **fields) -> bytes:
    ts = (T0 + timedelta(seconds=at)).isoformat().replace("+00:00", "Z")
    return orjson.dumps({"event": kind, "id": call_id, "ts": ts, **fields})


def outbound_call(
    call_id: str, *, connect_at: float | None = 4.5, end_at: float = 96.2, code: int = 200
) -> list[bytes]:
    events = [
        msg(
            "start",
            call_id,
            0,
            gateway="fra1",
            direction="outbound",
            account="acc-1002",
            source="12015550123",
            destination="447700123456",
            trunk="Outbound Trunk 2",
        ),
        msg(
            "end",
            call_id,
            end_at,
            disconnect_code=code,
            disconnect_reason="Bye",
            disconnect_initiator="destination",
        ),
    ]
    if connect_at is not None:
        events.insert(1, msg("connect", call_id, connect_at))
    return events


def feed_all(engine: Engine, raws: list[bytes]):
    cdrs, dead = [], []
    for offset, raw in enumerate(raws):
        out = engine.feed(raw, Source("t", 0, offset))
        cdrs.extend(out.cdrs)
        dead.extend(out.dead)
    return cdrs, dead


def test_outbound_call_is_rated_with_replaced_cli(refdata):
    cdrs, dead = feed_all(Engine(refdata), outbound_call("c1"))
    assert not dead and len(cdrs) == 1
    cdr = cdrs[0]
    # the replaced CLI is British, so a call to a British mobile is Local (not US->GB):
    # premium deck, 447 Local beats 447 (any): 0.0350/min, 60/60, no connection fee
    assert cdr.cli == "442079460000" and cdr.source == "12015550123"
    assert cdr.cdr_type == "Local"
    assert cdr.duration == 92  # ceil(96.2 - 4.5)
    assert cdr.billing_duration == 120
    assert cdr.rate == Decimal("0.0350")
    assert cdr.charged == Decimal("0.070000")
    assert cdr.status == "answered" and cdr.rated and not cdr.timed_out


def test_invalid_bytes_are_dead_lettered_with_reason(refdata):
    engine = Engine(refdata)
    cdrs, dead = feed_all(engine, [b"{oops", msg("connect", "", 1)])
    assert not cdrs
    assert [d.kind for d in dead] == ["invalid", "invalid"]
    assert "not valid JSON" in dead[0].reason and "id" in dead[1].reason
    assert dead[0].raw == b"{oops"
    assert engine.counters["dlq_invalid"] == 2


def test_calls_are_routed_like_kafka_partitions(refdata):
    from pipeline.core.partitioning import partition_for

    engine = Engine(refdata, partitions=8)
    engine.feed(outbound_call("route-me")[0], Source("f", 0, 1))
    part = partition_for("route-me", 8)
    later = T0 + timedelta(hours=5)
    assert all(not engine.advance(p, later).cdrs for p in range(8) if p != part)
    closed = engine.advance(part, later).cdrs
    assert [(c.id, c.timed_out) for c in closed] == [("route-me", True)]


def test_feed_line_routes_or_takes_the_given_partition(refdata):
    """A parallel replay's worker passes the partition it routed a line to; the call then
    lives there, exactly as if the engine had routed it itself."""
    from pipeline.core.partitioning import partition_for

    part = partition_for("route-me", 8)
    later = T0 + timedelta(hours=5)
    for routed in (None, part):
        engine = Engine(refdata, partitions=8)
        out = engine.feed_line(outbound_call("route-me")[0], "f", 1, routed)
        assert not out.cdrs and not out.dead
        assert all(not engine.advance(p, later).cdrs for p in range(8) if p != part)
        closed = engine.advance(part, later).cdrs
        assert [(c.id, c.timed_out) for c in closed] == [("route-me", True)]
    # an invalid line touches no partition, whatever it is given
    engine = Engine(refdata, partitions=8)
    out = engine.feed_line(b'{"event":"start","id":"x"}', "f", 2, 3)
    assert [d.kind for d in out.dead] == ["invalid"] and out.dead[0].source.partition == 0


def final_cdrs(refdata, raws: list[bytes]) -> dict:
    engine = Engine(refdata, settings=Deadlines())
    cdrs, _ = feed_all(engine, raws)
    latest = {}
    for cdr in cdrs:
        latest[cdr.id] = cdr
    for cdr in latest.values():
        cdr.revision = 0  # how many versions it took is not part of the record
    return latest


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.integers(0, 7), min_size=8, max_size=20).filter(
        lambda xs: set(xs) == set(range(8))
    ),
    st.randoms(use_true_random=False),
)
def test_any_permutation_and_duplication_gives_the_same_cdrs(refdata, picks, rnd: random.Random):
    calls = (
        outbound_call("a")
        + outbound_call("b", connect_at=None, end_at=12, code=486)
        + [
            msg(
                "start",
                "c",
                0,
                gateway="ams1",
                direction="inbound",
                account="acc-1001",
                source="4915123456789",
                did="18005550101",
                destination="442079460123",
            ),
            msg("connect", "c", 2),
            msg(
                "end",
                "c",
                62.01,
                disconnect_code=200,
                disconnect_reason="Bye",
                disconnect_initiator="origination",
            ),
        ]
    )
    expected = final_cdrs(refdata, calls)
    assert set(expected) == {"a", "b", "c"}
    shuffled = [calls[i] for i in picks]
    rnd.shuffle(shuffled)
    assert final_cdrs(refdata, shuffled) == expected
