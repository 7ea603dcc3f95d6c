"""Offline replay: a JSON Lines file of gateway events -> CDRs in the store.

It runs the very `Engine` the streaming workers run, routing each call to the partition Kafka
would give it, so a replay of the simulator's file is the reference the streaming pipeline is
checked against.

    serial     a replay in this process, and what both kinds share (summary, collector)
    parallel   `jobs` > 1: the partitions spread over worker processes, the same outcome

Imports go one way: this module -> parallel -> serial.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.core.refdata import RefDataHolder
from pipeline.replay.serial import (
    DEFAULT_PARTITIONS,
    CdrOutput,
    Replay,
    ReplaySummary,
    fewer_gc_passes,
    iter_lines,
    resolve_jobs,
)

__all__ = [
    "DEFAULT_PARTITIONS",
    "DISK_STATE_FROM",
    "Replay",
    "ReplaySummary",
    "choose_state_dir",
    "fewer_gc_passes",
    "iter_lines",
    "replay_file",
    "resolve_jobs",
]

DISK_STATE_FROM = 256 << 20


def choose_state_dir(
    events: Path, state: str = "auto", state_dir: Path | None = None
) -> Path | None:
    """Where `cdrpipe replay` keeps call states: None for memory, else the directory for its
    temporary store (`state_dir`, by default $CDRPIPE_DATA/replay-state). `state` is memory,
    disk, or auto: disk if `state_dir` is given or the file is over `DISK_STATE_FROM` bytes."""
    if state == "memory":
        return None
    if state_dir is None:
        from pipeline import config

        where = config.data_dir() / "replay-state"
    else:
        where = state_dir
    if state == "disk" or state_dir is not None:
        return where
    if state != "auto":
        raise ValueError(f"state must be auto, memory or disk, got {state!r}")
    try:
        size = events.stat().st_size
    except OSError:  # reading it will say what is wrong
        return None
    return where if size > DISK_STATE_FROM else None


def replay_file(
    path: Path,
    refdata: RefDataHolder,
    sink: CdrOutput,
    *,
    jobs: int = 1,
    **kwargs: object,
) -> ReplaySummary:
    """Replay one JSON Lines file; see `Replay`. `jobs` worker processes (0 = one per CPU;
    1, the default, replays in this process) give the same outcome; see
    `pipeline.replay.parallel`. `state_dir` (a keyword) keeps the call states on disk
    there, in a temporary store of each process, removed at the end."""
    partitions = int(kwargs.get("partitions", DEFAULT_PARTITIONS))  # type: ignore[call-overload]
    if resolve_jobs(jobs, partitions) > 1:
        from pipeline.replay.parallel import ParallelReplay

        replay: Replay | ParallelReplay = ParallelReplay(
            refdata,
            sink,
            jobs=jobs,
            **kwargs,  # type: ignore[arg-type]
        )
    else:
        replay = Replay(refdata, sink, **kwargs)  # type: ignore[arg-type]
    with path.open("rb") as stream:
        return replay.run(iter_lines(stream), name=path.name)
