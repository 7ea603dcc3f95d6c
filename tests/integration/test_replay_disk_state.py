"""`replay` with the call states on disk (`--state-dir`) gives exactly what the in-memory
replay gives: the sink batches (every field of every CDR version), the dead letters with
their line numbers, the bad-line report and the summary, with one process and with
`--jobs 2`; the billing corpus gives its hand-computed rows; the temporary store is gone
afterwards.

RocksDB is not fork-safe: once a process has opened one, children forked from it cannot use
RocksDB. This test process opens some, so the `--jobs 2` replays with states on disk run in
fresh interpreters, as `cdrpipe replay` does.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import pickle
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pipeline.core import events as events_module
from pipeline.core.refdata import RefDataHolder
from pipeline.replay import replay_file
from pipeline.replay.parallel import ParallelReplay
from pipeline.simulate import SimConfig, generate, write_jsonl
from pipeline.state.rocks import fork_safe, open_db
from tests.integration.conftest import PARTITIONS, dump_store
from tests.integration.test_billing_corpus import (  # noqa: F401 - fixtures used by name
    corpus,
    dead_letter_key,
    default_settings,
    store_problems,
)
from tests.unit.test_replay_parallel import SETTINGS, counted, strict

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "config"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def refdata() -> RefDataHolder:
    return RefDataHolder(CONFIG)


@pytest.fixture(scope="module")
def events(tmp_path_factory) -> Path:
    """~25 minutes of calls with every kind of trouble; with `SETTINGS` (15 min maximum call,
    2 min orphan wait, 10 min memory) calls time out and are corrected, are orphaned,
    forgotten and dead-lettered as late within the file."""
    cfg = SimConfig(
        calls=4000,
        seed=23,
        config_dir=str(CONFIG),
        start=datetime.now(UTC).replace(microsecond=0) - timedelta(hours=6),
        call_rate=2.5,
        reorder=0.05,
        duplicate=0.05,
        late=0.05,
        orphan=0.04,
        never_ending=0.04,
        malformed=0.02,
    )
    path = tmp_path_factory.mktemp("events") / "events.jsonl"
    write_jsonl(generate(cfg).messages, path)
    with path.open("ab") as f:  # lines without a usable call id, and blank ones
        f.write(b'\n  \n{"id": 5}\n["id"]\n{"event":"start","\\u0069d":"x"}\n')
    return path


def replay(path: Path, refdata: RefDataHolder, **kwargs):
    """Sink batches (every field, typed), dead letters with line numbers, summary."""
    batches: list[list[tuple]] = []
    dead: list[tuple] = []
    summary = replay_file(
        path,
        refdata,
        lambda batch: batches.append([strict(c) for c in batch]),
        settings=SETTINGS,
        dead_letter=lambda line, letter: dead.append((line, letter)),
        flush_every=700,
        **kwargs,
    )
    return batches, dead, counted(summary)


#: `replay` (above) in a fresh interpreter: argv events, output file, jobs, state dir.
FRESH = """
import pickle, sys
from pathlib import Path
from pipeline.core.refdata import RefDataHolder
from tests.integration.test_replay_disk_state import CONFIG, replay
events, out, jobs, state_dir = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
result = replay(events, RefDataHolder(CONFIG), jobs=jobs, state_dir=state_dir)
out.write_bytes(pickle.dumps(result))
"""


def replay_fresh(path: Path, tmp_path: Path, jobs: int, state_dir: Path):
    out = tmp_path / f"result-{jobs}.pickle"
    argv = [sys.executable, "-c", FRESH, str(path), str(out), str(jobs), str(state_dir)]
    subprocess.run(argv, check=True, cwd=ROOT, env=os.environ | {"PYTHONPATH": str(ROOT)})
    return pickle.loads(out.read_bytes())


@pytest.mark.parametrize("jobs", [1, 2])
def test_disk_states_give_what_memory_gives(events, refdata, tmp_path, jobs):
    memory = replay(events, refdata, jobs=jobs)
    batches, dead, summary = memory
    kinds = summary["dlq_by_kind"]
    assert kinds.get("invalid") and kinds.get("orphan") and kinds.get("late"), kinds
    assert summary["timed_out"] and summary["duplicates"] and summary["still_open"]
    assert summary["account_mismatch"] is not None and summary["unrated"]
    revisions = {r for b in batches for c in b for name, _, r in c if name == "revision"}
    assert revisions - {"1"}, "no call was corrected"
    state_dir = tmp_path / "states"
    if jobs == 1:
        disk = replay(events, refdata, jobs=jobs, state_dir=state_dir)
    else:
        disk = replay_fresh(events, tmp_path, jobs, state_dir)
    assert disk[0] == batches, "CDR batches differ"
    assert disk[1] == dead, "dead letters differ"
    assert disk[2] == summary, "summary differs"
    assert state_dir.is_dir() and not any(state_dir.iterdir()), "the store was left behind"


def test_a_disk_replay_leaves_no_cyclic_garbage(events, refdata, tmp_path):
    """As the in-memory replay (tests/unit/test_replay.py): `fewer_gc_passes` freezes what
    lives without a collection first, right only while the replay makes no cycles."""
    events_module._kinds()
    replay(events, refdata, state_dir=tmp_path / "warm-up")  # imports, compiled patterns
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    try:
        replay(events, refdata, state_dir=tmp_path / "states")
        assert gc.collect() == 0
    finally:
        if was:
            gc.enable()


def test_a_parallel_disk_replay_refuses_to_fork_from_a_process_that_opened_a_rocksdb(
    events, refdata, tmp_path
):
    """Its workers would wait forever for RocksDB threads that were not forked: an error
    instead, before any worker starts."""
    open_db(tmp_path / "db").close()
    assert not fork_safe()
    replayer = ParallelReplay(refdata, list, jobs=2, state_dir=tmp_path / "states")
    with pytest.raises(RuntimeError, match="not fork-safe"):
        replayer.run(iter([(1, b"{}")]))
    assert not (tmp_path / "states").exists() or not any((tmp_path / "states").iterdir())


def test_cli_replay_with_state_dir_stores_the_same(events, tmp_path):
    env = os.environ | {
        "CDRPIPE_MAX_CALL_S": "900",
        "CDRPIPE_ORPHAN_WAIT_S": "120",
        "CDRPIPE_MEMORY_S": "600",
        "PYTHONPATH": str(ROOT),
    }
    results = {}
    for name, extra in (
        ("memory", ["--state", "memory"]),
        ("disk", ["--state-dir", str(tmp_path / "states")]),
        ("disk-2", ["--state", "disk", "--state-dir", str(tmp_path / "states"), "--jobs", "2"]),
    ):
        store = f"chdb://{tmp_path / f'store-{name}'}"
        dlq = tmp_path / f"dlq-{name}.jsonl"
        argv = [sys.executable, "-m", "pipeline.cli", "replay", str(events), "--config"]
        argv += [str(CONFIG), "--store", store, "--dlq", str(dlq), "--show-bad", "1000", *extra]
        out = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, check=True)
        summary = [line for line in out.stdout.splitlines() if not line.startswith(b"elapsed")]
        stored = {k: dataclasses.astuple(v) for k, v in dump_store(store).items()}
        results[name] = (summary, out.stderr, dlq.read_bytes(), stored)
    assert results["disk"] == results["memory"] == results["disk-2"]
    assert len(results["memory"][3]) > 2000 and b'"kind":"orphan"' in results["memory"][2]
    assert results["memory"][1].count(b"\n") > 10  # the bad-line report
    assert not any((tmp_path / "states").iterdir())


def test_billing_corpus_replayed_with_states_on_disk(corpus, tmp_path):  # noqa: F811
    """The hand-computed corpus (tests/integration/test_billing_corpus.py) through the disk
    path: every export cell and call attribute as expected, the expected dead letters, and
    the in-memory replay's summary and stored CDRs."""
    from pipeline.store.client import connect
    from pipeline.store.writer import CdrWriter

    out = {}
    for name, state_dir in (("memory", None), ("disk", tmp_path / "states")):
        dsn = f"chdb://{tmp_path / f'store-{name}'}"
        dead: list = []
        client = connect(dsn)
        try:
            summary = replay_file(
                corpus.events,
                RefDataHolder(corpus.config),
                CdrWriter(client).write,
                partitions=PARTITIONS,
                dead_letter=lambda _line, d, dead=dead: dead.append(d),
                state_dir=state_dir,
            )
        finally:
            client.close()
        out[name] = (dsn, counted(summary), dead)
    dsn, summary, dead = out["disk"]
    assert store_problems(dsn, corpus) == []
    assert {dead_letter_key(d.raw, d.kind) for d in dead} == corpus.dead_letters()
    assert summary == out["memory"][1] and dead == out["memory"][2]
    assert dump_store(dsn) == dump_store(out["memory"][0])


def test_where_cdrpipe_replay_keeps_its_states(tmp_path, monkeypatch):
    from pipeline.replay import DISK_STATE_FROM, choose_state_dir

    monkeypatch.setenv("CDRPIPE_DATA", str(tmp_path / "data"))
    small, large = tmp_path / "small.jsonl", tmp_path / "large.jsonl"
    small.write_bytes(b"{}\n")
    with large.open("wb") as f:
        f.truncate(DISK_STATE_FROM + 1)  # sparse: no disk used
    default = tmp_path / "data" / "replay-state"
    assert choose_state_dir(small) is None
    assert choose_state_dir(large) == default
    assert choose_state_dir(large, "memory") is None
    assert choose_state_dir(small, "disk") == default
    assert choose_state_dir(small, "auto", tmp_path / "s") == tmp_path / "s"
    assert choose_state_dir(large, "memory", tmp_path / "s") is None
    with pytest.raises(ValueError):
        choose_state_dir(large, "ram")
