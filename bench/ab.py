"""Two versions of the code side by side, for A/B runs in one process tree (this machine's speed
drifts, so only figures of one run compare): the base revision in a temporary git worktree,
built as scripts/setup.sh builds it, and the working tree as it is."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def base_worktree(revision: str, parent: Path, *, compiled: bool) -> Iterator[Path]:
    """`revision` checked out under `parent`, compiled if it has the compiled build and
    `compiled`; removed again afterwards."""
    base = parent / "base"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(base), revision],
        check=True,
    )
    try:
        if compiled and (base / "setup.py").is_file():
            subprocess.run(
                [sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
                cwd=base,
                check=True,
                capture_output=True,
            )
        yield base
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], check=False
        )


def run_side(code: Path, argv: list[str], cwd: Path, *, pure: bool) -> str:
    """Run `argv` in a fresh interpreter whose `pipeline` is the one in `code` (not from the
    repository's folder: "" on sys.path would be the working tree); its stdout, stripped."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    if pure:
        env["CDRPIPE_PURE_PYTHON"] = "1"
    out = subprocess.run(argv, env=env, cwd=cwd, check=True, capture_output=True, text=True)
    return out.stdout.strip()
