"""The CDR wire format of `cdr.records`: what a worker writes, the sink reads back exactly."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from pipeline.core.correlate import Deadlines
from pipeline.core.model import CDR
from pipeline.core.refdata import RefDataHolder
from pipeline.replay import Replay
from pipeline.simulate import SimConfig, generate
from pipeline.stream.codec import cdr_from_bytes, cdr_to_bytes

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "config"


def strict(cdr: CDR) -> tuple:
    """Every field with its type and repr: Decimal("1.0") is not Decimal("1.00") here."""
    return tuple(
        (f.name, type(v).__name__, repr(v))
        for f in dataclasses.fields(CDR)
        for v in [getattr(cdr, f.name)]
    )


@pytest.fixture(scope="module")
def cdrs() -> list[CDR]:
    sim = generate(
        SimConfig(
            calls=2000,
            seed=3,
            config_dir=str(CONFIG),
            start=datetime.now(UTC) - timedelta(hours=3),
            call_rate=2.0,
            never_ending=0.05,
        )
    )
    out: list[CDR] = []
    settings = Deadlines(max_call_duration=timedelta(minutes=15))
    replay = Replay(RefDataHolder(CONFIG), out.extend, settings=settings)
    replay.run((i, m.value) for i, m in enumerate(sim.messages))
    return out


def test_every_cdr_round_trips_field_by_field(cdrs: list[CDR]) -> None:
    kinds = {(c.direction, c.rated, c.timed_out, c.connect_time is None) for c in cdrs}
    assert len(kinds) >= 6  # both directions, unrated, timed out, unanswered
    for cdr in cdrs:
        assert strict(cdr_from_bytes(cdr_to_bytes(cdr))) == strict(cdr)


def test_money_travels_as_decimal_strings_never_floats(cdrs: list[CDR]) -> None:
    rated = next(c for c in cdrs if c.direction == "outbound" and c.charged)
    data = orjson.loads(cdr_to_bytes(rated))
    assert data["charged"] == str(rated.charged)
    assert data["rate"] == str(rated.rate)
    assert data["start_time"] == rated.start_time.isoformat()


def test_a_record_without_defaulted_fields_gets_their_defaults(cdrs: list[CDR]) -> None:
    """Records written before `rated`, `timed_out` and `revision` existed still decode."""
    data = orjson.loads(cdr_to_bytes(cdrs[0]))
    for name in ("rated", "timed_out", "revision"):
        del data[name]
    decoded = cdr_from_bytes(orjson.dumps(data))
    assert (decoded.rated, decoded.timed_out, decoded.revision) == (True, False, 1)
    assert decoded.id == cdrs[0].id and decoded.charged == cdrs[0].charged
