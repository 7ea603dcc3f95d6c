"""Which local state directory a worker process uses.

RocksDB allows one process per database, and several workers may run on one host with the
same data directory. Each takes the first free slot (`slot-0`, `slot-1`, ...) under it,
held by an exclusive lock for the life of the process: a worker restarted on the same host
(after a crash too: the kernel drops the lock with the process) finds its stores again in
the slot it frees, the lowest, as long as the others keep theirs.

Slots are private to the user running the workers (directories 0o700, files 0o600): the
states hold call parties and amounts. RocksDB creates its files from its own threads for as
long as the process runs, so claiming a slot also tightens the process umask for good
(`pipeline.private_files`).
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.private_files import PRIVATE_FILE, keep_files_private, private_dir

__all__ = ["Slot", "claim_slot"]


@dataclass(frozen=True)
class Slot:
    index: int
    path: Path
    fd: int  # holds the lock; closed (released) with the process, or on exec


def claim_slot(root: Path, limit: int = 1024) -> Slot:
    """The first slot under `root` no other process holds, locked for this one; from then on
    the files this process creates are private (module doc)."""
    keep_files_private()
    private_dir(root)
    for index in range(limit):
        lock = root / f"slot-{index}.lock"
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE)
        os.fchmod(fd, PRIVATE_FILE)  # a lock file left by an older version may be wider
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        path = root / f"slot-{index}"
        private_dir(path)
        return Slot(index, path, fd)
    raise RuntimeError(f"no free state slot under {root} ({limit} in use)")
