"""Which local state directory a worker process uses.

RocksDB allows one process per database, and several workers may run on one host with the
same data directory. Each takes the first free slot (`slot-0`, `slot-1`, ...) under it,
held by an exclusive lock for the life of the process: a worker restarted on the same host
(after a crash too: the kernel drops the lock with the process) finds its stores again in
the slot it frees, the lowest, as long as the others keep theirs.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Slot", "claim_slot"]


@dataclass(frozen=True)
class Slot:
    index: int
    path: Path
    fd: int  # holds the lock; closed (released) with the process, or on exec


def claim_slot(root: Path, limit: int = 1024) -> Slot:
    """The first slot under `root` no other process holds, locked for this one."""
    root.mkdir(parents=True, exist_ok=True)
    for index in range(limit):
        lock = root / f"slot-{index}.lock"
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        path = root / f"slot-{index}"
        path.mkdir(exist_ok=True)
        return Slot(index, path, fd)
    raise RuntimeError(f"no free state slot under {root} ({limit} in use)")
