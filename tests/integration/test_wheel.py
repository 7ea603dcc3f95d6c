"""The package as a user installs it: a wheel built from the source tree, installed (not
editable) into a fresh virtual environment, runs `cdrpipe simulate`, `replay` and `export`
from a directory of its own, with nothing of the source tree on its path. It finds its event
schemas, ClickHouse DDL and sample reference data as package data."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

from pipeline.store.export import HEADERS

ROOT = Path(__file__).resolve().parents[2]


def run(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{argv} failed:\n{out.stdout}\n{out.stderr}"
    return out


def test_installed_wheel_replays_and_exports_from_any_directory(tmp_path: Path) -> None:
    # Pure Python: the compiled build is the same source (setup.py), and this is about files.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDRPIPE_")}
    env.pop("PYTHONPATH", None)
    build = env | {"CDRPIPE_PURE_PYTHON": "1"}
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    run(
        [*pip, "wheel", "--no-deps", "-w", str(wheels), str(ROOT)],
        ROOT,
        build,
    )
    (wheel,) = wheels.glob("cdrpipe-*.whl")

    # A fresh environment; its dependencies are this one's (a path entry, not a site dir:
    # the editable install of the source tree there is not loaded).
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, env)
    python = venv / "bin" / "python"
    site = run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp_path, env
    ).stdout.strip()
    Path(site, "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    run([*pip, "--python", str(python), "install", "--no-deps", str(wheel)], tmp_path, env)

    work = tmp_path / "elsewhere"
    work.mkdir()
    where = run([str(python), "-c", "import pipeline; print(pipeline.__file__)"], work, env)
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout
    cdrpipe = str(venv / "bin" / "cdrpipe")
    run([cdrpipe, "simulate", "--calls", "300", "--seed", "7", "-o", "events.jsonl"], work, env)
    replay = run([cdrpipe, "replay", "events.jsonl"], work, env)
    assert "300" in replay.stdout + replay.stderr
    run([cdrpipe, "export", "--direction", "outbound", "-o", "out.csv"], work, env)
    rows = list(csv.reader(io.StringIO((work / "out.csv").read_text(encoding="utf-8"))))
    assert rows[0] == HEADERS["outbound"]
    assert len(rows) > 50  # the simulator's outbound share of 300 calls
    assert (work / "data" / "store").is_dir()  # the embedded store under the current directory
