"""Data the pipeline keeps on local disk is readable by its own user only.

The embedded store (chDB) and the worker state stores (RocksDB) write their files from C++
threads of this process, whose modes only the process umask governs. Each test runs under the
common umask 022, the one that used to leave parts 644 and folders 755, and walks what was
written: no file or directory may grant group or other any permission.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.state.checkpointed import Checkpoint, DiskStates
from pipeline.state.slots import claim_slot
from pipeline.store.client import connect
from pipeline.store.writer import CdrWriter
from tests.integration.test_store import inbound, outbound

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The process umask at 022 for the test, and whatever it was afterwards."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def exposed(root: Path) -> list[str]:
    """Every path under `root` (itself included) that grants group or other any permission."""
    found: list[str] = []
    paths = [root, *root.rglob("*")]
    for path in paths:
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode):
            continue
        if stat.S_IMODE(mode) & 0o077:
            found.append(f"{oct(stat.S_IMODE(mode))} {path.relative_to(root.parent)}")
    assert len(paths) > 3, f"nothing was written under {root}"
    return found


def test_embedded_store_files_are_private(tmp_path: Path, umask_022: None) -> None:
    store = tmp_path / "store"
    with connect(f"chdb://{store}") as client:
        CdrWriter(client).write([outbound(1), inbound(2)])
        CdrWriter(client).write([outbound(3)])
        client.command("OPTIMIZE TABLE cdr_outbound FINAL")  # a merge: files from chDB's pool
    assert exposed(store) == []
    assert current_umask() == 0o022, "closing the store gives the process its umask back"


def test_existing_store_directory_is_tightened(tmp_path: Path, umask_022: None) -> None:
    store = tmp_path / "store"
    store.mkdir(mode=0o755)
    with connect(f"chdb://{store}"):
        pass
    assert stat.S_IMODE(store.stat().st_mode) == 0o700


def test_worker_state_files_are_private(tmp_path: Path, umask_022: None) -> None:
    """As the batch worker opens its states: a slot, then the partition stores in it."""
    root = tmp_path / "state"
    slot = claim_slot(root)
    try:
        states = DiskStates(slot.path, 1)
        states.open_store(0)
        states.attach(0)
        states.flush({0: Checkpoint(1, 10, {"f": 10}, {})})
        states.close()
    finally:
        os.close(slot.fd)
    assert exposed(root) == []


def test_importing_the_package_leaves_the_umask_alone() -> None:
    """Only opening local stores tightens the umask; a library import must not."""
    code = (
        "import os; os.umask(0o022)\n"
        "import pipeline.store.client, pipeline.state.slots, pipeline.private_files\n"
        "import pipeline.api.cli, pipeline.cli\n"
        "print(oct(os.umask(0o022)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "0o22"


def test_the_command_line_writes_private_files(tmp_path):
    """A command run under a wide umask (here `simulate -o`) still writes its file 0o600."""
    out = tmp_path / "events.jsonl"
    code = (
        "import os, sys; os.umask(0o022); from pipeline.cli import main; "
        f"sys.exit(main(['simulate', '--calls', '3', '-o', {str(out)!r}]))"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
