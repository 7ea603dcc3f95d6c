"""Every benchmark script still imports and parses its options: a script that names a moved or
renamed function fails here, not the day someone needs its figures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted((ROOT / "bench").glob("*.py"))


def test_there_are_scripts():
    assert len(SCRIPTS) >= 10


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_starts(script: Path):
    if '__name__ == "__main__"' in script.read_text():
        command = [sys.executable, str(script), "--help"]
    else:  # a module the scripts share: it must import
        command = [sys.executable, "-c", f"import runpy; runpy.run_path({str(script)!r})"]
    done = subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
