"""Which of our modules run compiled: never one built from other source than the one beside it.

setup.py may compile some modules with Cython, from their unchanged source, and record each
source's SHA-256 in ``_compiled.json``. Python's own import system prefers a compiled module to
its source whatever their age, so an edit without a rebuild, or a checkout of other code over a
build, would run stale code. `SourceGuard` (first on ``sys.meta_path``) loads the source
instead of every compiled module whose source the manifest does not record as unchanged;
CDRPIPE_PURE_PYTHON=1 loads every module from source (the tests run the core so too).

This module must stay pure Python: it decides how the others load.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Sequence
from importlib.abc import MetaPathFinder
from importlib.machinery import EXTENSION_SUFFIXES, ModuleSpec
from importlib.util import spec_from_file_location
from pathlib import Path
from types import ModuleType

PACKAGE = "pipeline"
MANIFEST = Path(__file__).with_name("_compiled.json")


def pure_python() -> bool:
    return os.environ.get("CDRPIPE_PURE_PYTHON", "") not in ("", "0")


def compiled_from_current_source(manifest: Path, root: Path) -> frozenset[str]:
    """The modules of the manifest whose source under `root` is still the one compiled."""
    try:
        built = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return frozenset()
    fresh = set()
    for name, digest in built.items() if isinstance(built, dict) else ():
        source = root.joinpath(*name.split(".")).with_suffix(".py")
        try:
            if hashlib.sha256(source.read_bytes()).hexdigest() == digest:
                fresh.add(name)
        except OSError:
            continue
    return frozenset(fresh)


class SourceGuard(MetaPathFinder):
    """Finds the source of a `package` module that has a compiled twin not in `fresh`, and
    leaves every other import to the finders after it."""

    def __init__(self, package: str, fresh: frozenset[str]) -> None:
        self.prefix = package + "."
        self.fresh = fresh

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if not fullname.startswith(self.prefix) or fullname in self.fresh or not path:
            return None
        leaf = fullname.rpartition(".")[2]
        for entry in path:
            base = os.path.join(entry, leaf)
            if os.path.isfile(base + ".py"):
                if any(os.path.isfile(base + suffix) for suffix in EXTENSION_SUFFIXES):
                    return spec_from_file_location(fullname, base + ".py")
                return None
        return None


def install() -> None:
    """Put a `SourceGuard` for this package first on ``sys.meta_path`` (once)."""
    if any(isinstance(finder, SourceGuard) for finder in sys.meta_path):
        return
    root = MANIFEST.parents[1]
    fresh = frozenset() if pure_python() else compiled_from_current_source(MANIFEST, root)
    sys.meta_path.insert(0, SourceGuard(PACKAGE, fresh))


def compiled() -> list[str]:
    """The package's modules imported so far that run compiled."""
    return sorted(
        name
        for name, module in list(sys.modules.items())
        if name.startswith(PACKAGE + ".")
        and str(getattr(module, "__file__", "") or "").endswith(tuple(EXTENSION_SUFFIXES))
    )
