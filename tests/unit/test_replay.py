"""The one-process replay loop (pipeline/replay/serial.py)."""

from __future__ import annotations

import gc
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pipeline.core import events
from pipeline.core.refdata import RefDataHolder
from pipeline.replay import fewer_gc_passes, replay_file
from pipeline.simulate import SimConfig, generate, write_jsonl

from .test_replay_parallel import SETTINGS

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "config"


def test_a_replay_leaves_no_cyclic_garbage(tmp_path):
    """`fewer_gc_passes` freezes what the replay keeps without a collection first: right only
    as long as the replay makes no reference cycles (invalid lines, orphans and late events
    included), or they would sit in the permanent generation until the replay ends."""
    cfg = SimConfig(
        calls=1500,
        seed=5,
        config_dir=str(CONFIG),
        start=datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3),
        call_rate=2.0,
        reorder=0.05,
        duplicate=0.05,
        late=0.05,
        orphan=0.05,
        never_ending=0.05,
        malformed=0.05,
    )
    path = tmp_path / "events.jsonl"
    write_jsonl(generate(cfg).messages, path)
    with path.open("ab") as f:
        f.write(
            b'{"id": 5}\n["id"]\nnot json\n{"event":"end","id":"x","ts":"2026-13-01T00:00:00Z"}\n'
        )
    refdata = RefDataHolder(CONFIG)
    kept: list = []
    events._kinds()  # compiling the validators (once per process) leaves some garbage
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    try:
        summary = replay_file(path, refdata, kept.extend, settings=SETTINGS)
        assert summary.bad_lines and summary.dlq_by_kind.get("orphan")
        assert gc.collect() == 0
    finally:
        if was:
            gc.enable()


def test_freeze_survivors_freezes_and_everything_is_thawed_on_exit():
    assert gc.get_freeze_count() == 0
    with fewer_gc_passes() as freeze_survivors:
        keep = [[] for _ in range(100)]
        freeze_survivors()
        assert gc.get_freeze_count() >= 100
    assert gc.get_freeze_count() == 0
    assert keep
