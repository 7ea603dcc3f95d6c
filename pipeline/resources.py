"""The data files the package reads, as package data (`importlib.resources`): the event
schemas (the contract, `schemas/`), the ClickHouse DDL, the sample reference data and the
local broker's templates (`deploy/`).

In the source tree `pipeline/data/*` are links to those folders, so there is one copy of
each file; a wheel carries the files themselves, so an installed `cdrpipe` finds them from
any directory without the source tree.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

__all__ = ["data_path"]


def data_path(*parts: str) -> Path:
    """A file or folder of the package's data (`pipeline/data/...`) as a path: wheels are
    installed unpacked, so package data always is one on disk."""
    return Path(str(files("pipeline").joinpath("data", *parts)))
