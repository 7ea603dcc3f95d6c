"""The one build step pyproject.toml cannot declare: the optional compiled hot path.

The modules listed under ``[tool.cdrpipe] compiled`` in pyproject.toml are compiled by Cython
from their unchanged source: no Cython syntax, no C types, the same code the tests read; about
15% less CPU per event (docs/BENCHMARKS.md, "Compiled hot path"). The build records the SHA-256
of each source it compiled in ``pipeline/_compiled.json``; `pipeline._accel` loads a compiled
module only while the source beside it is still exactly that one.

    CDRPIPE_PURE_PYTHON=1        build nothing: the package is pure Python
    CDRPIPE_REQUIRE_COMPILED=1   a failed compile fails the build (CI), instead of a warning

`pip install -e .` compiles in place; scripts/setup.sh runs ``python setup.py build_ext
--inplace`` on every set-up, so a changed module is compiled again (the unchanged are skipped).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tomllib
from pathlib import Path

from setuptools import Extension, setup  # type: ignore[import-untyped]
from setuptools.command.build_ext import build_ext  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent
MANIFEST = Path("pipeline") / "_compiled.json"


def compiled_modules() -> list[str]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return list(tomllib.load(f)["tool"]["cdrpipe"]["compiled"])


def source_of(module: str) -> Path:
    return Path(*module.split(".")).with_suffix(".py")


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


class OptionalBuildExt(build_ext):
    """Compiles what it can and writes the manifest of what it compiled; a module that does not
    compile stays pure Python (with a warning) unless CDRPIPE_REQUIRE_COMPILED is set."""

    def finalize_options(self) -> None:
        super().finalize_options()
        if not getattr(self, "parallel", None):  # unset: one compiler process per CPU
            self.parallel = os.cpu_count() or 1

    def run(self) -> None:
        self.built: dict[str, str] = {}
        super().run()
        target = (ROOT if self.inplace else Path(self.build_lib)) / MANIFEST
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(self.built, indent=1, sort_keys=True) + "\n")

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # a compiler error, a missing compiler, Python headers...
            if _flag("CDRPIPE_REQUIRE_COMPILED"):
                raise
            print(f"warning: {ext.name} stays pure Python: {exc}", file=sys.stderr)
            return
        self.built[ext.name] = hashlib.sha256((ROOT / source_of(ext.name)).read_bytes()).hexdigest()


def extensions() -> list[Extension]:
    if _flag("CDRPIPE_PURE_PYTHON"):
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        if _flag("CDRPIPE_REQUIRE_COMPILED"):
            raise
        print("warning: Cython is not installed: pipeline stays pure Python", file=sys.stderr)
        return []
    # gcc 12 warns of array bounds in CPython's own headers on every module: noise.
    flags = ["-Wno-array-bounds"] if os.name == "posix" else []
    modules = [
        Extension(name, [str(source_of(name))], extra_compile_args=flags)
        for name in compiled_modules()
    ]
    return cythonize(
        modules,
        language_level=3,
        # cyfunctions that behave like Python functions: introspectable, bindable as methods.
        compiler_directives={"binding": True},
        nthreads=os.cpu_count() or 1,
        quiet=True,
    )


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
