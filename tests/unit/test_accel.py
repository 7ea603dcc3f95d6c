"""Compiled modules (setup.py) run only while built from the source beside them (_accel)."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import tomllib
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

from pipeline import _accel

ROOT = Path(__file__).resolve().parents[2]


def listed() -> list[str]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return list(tomllib.load(f)["tool"]["cdrpipe"]["compiled"])


def _package(tmp_path: Path) -> Path:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "fast.py").write_text("X = 1\n")
    (pkg / ("fast" + EXTENSION_SUFFIXES[0])).write_bytes(b"never loaded")
    (pkg / "plain.py").write_text("X = 2\n")
    return pkg


def test_a_compiled_twin_of_a_changed_source_loads_from_source(tmp_path):
    pkg = _package(tmp_path)
    guard = _accel.SourceGuard("pkg", frozenset())
    spec = guard.find_spec("pkg.fast", [str(pkg)])
    assert spec is not None and spec.origin == str(pkg / "fast.py")
    # compiled from another source: left to Python's finders, which prefer the compiled module
    assert (
        _accel.SourceGuard("pkg", frozenset({"pkg.fast"})).find_spec("pkg.fast", [str(pkg)]) is None
    )
    assert guard.find_spec("pkg.plain", [str(pkg)]) is None  # no compiled twin
    assert guard.find_spec("other.fast", [str(pkg)]) is None  # not the package
    assert guard.find_spec("pkg", None) is None  # the package itself


def test_the_manifest_counts_only_unchanged_sources(tmp_path):
    pkg = _package(tmp_path)
    digest = hashlib.sha256(b"X = 1\n").hexdigest()
    manifest = tmp_path / "_compiled.json"
    manifest.write_text(json.dumps({"pkg.fast": digest, "pkg.gone": digest}))
    assert _accel.compiled_from_current_source(manifest, tmp_path) == {"pkg.fast"}
    (pkg / "fast.py").write_text("X = 3\n")  # edited after the build
    assert _accel.compiled_from_current_source(manifest, tmp_path) == frozenset()
    manifest.write_text("not json")
    assert _accel.compiled_from_current_source(manifest, tmp_path) == frozenset()
    assert _accel.compiled_from_current_source(tmp_path / "missing.json", tmp_path) == frozenset()


def test_exactly_the_modules_compiled_from_their_current_source_run_compiled():
    """In this very test run: compiled where the build compiled the source as it is, else source;
    with CDRPIPE_PURE_PYTHON nothing compiled; with CDRPIPE_REQUIRE_COMPILED (scripts/test.sh)
    every module pyproject.toml lists."""
    for name in listed():
        importlib.import_module(name)
    running = set(_accel.compiled())
    if _accel.pure_python():
        assert running == set()
        return
    assert running == _accel.compiled_from_current_source(_accel.MANIFEST, ROOT) & set(listed())
    if os.environ.get("CDRPIPE_REQUIRE_COMPILED", "") not in ("", "0"):
        assert running == set(listed())
