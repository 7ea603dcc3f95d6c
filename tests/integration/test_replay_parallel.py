"""`cdrpipe replay --jobs 2` into an embedded store equals `--jobs 1`: the stored CDRs (every
field), the dead-letter file (byte for byte), the bad-line report and the printed summary.

The workers are forked from a process that already holds a chDB client; only the parent
writes to the store.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pipeline.cli import main as cli_main
from pipeline.simulate import SimConfig, generate, write_jsonl
from tests.integration.conftest import dump_store

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "config"


def strict(cdr) -> tuple:
    return tuple((type(v).__name__, repr(v)) for v in dataclasses.astuple(cdr))


def test_cli_replay_jobs_identical(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CDRPIPE_MAX_CALL_S", "900")
    monkeypatch.setenv("CDRPIPE_ORPHAN_WAIT_S", "120")
    monkeypatch.setenv("CDRPIPE_MEMORY_S", "600")
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=6)
    cfg = SimConfig(
        calls=3000,
        seed=5,
        config_dir=str(CONFIG),
        start=start,
        call_rate=2.0,
        reorder=0.05,
        duplicate=0.05,
        late=0.05,
        orphan=0.03,
        never_ending=0.03,
        malformed=0.02,
    )
    events = tmp_path / "events.jsonl"
    write_jsonl(generate(cfg).messages, events)

    results = {}
    for jobs in (1, 2):
        store = f"chdb://{tmp_path / f'store-{jobs}'}"
        dlq = tmp_path / f"dlq-{jobs}.jsonl"
        argv = ["replay", str(events), "--config", str(CONFIG), "--store", store]
        argv += ["--dlq", str(dlq), "--jobs", str(jobs), "--show-bad", "1000"]
        assert cli_main(argv) == 0
        out = capsys.readouterr()
        summary = [line for line in out.out.splitlines() if not line.startswith("elapsed")]
        stored = {k: strict(v) for k, v in dump_store(store).items()}
        results[jobs] = (summary, out.err, dlq.read_bytes(), stored)

    one, two = results[1], results[2]
    assert one[0] == two[0], "summary"
    assert one[1] == two[1] and one[1].count("\n") > 10, "bad-line report"
    assert one[2] == two[2] and one[2].count(b'"kind":"orphan"') > 0, "dead letters"
    assert b'"kind":"late"' in one[2]
    assert one[3] == two[3] and len(one[3]) > 2000, "stored CDRs"
