"""Local data readable by its own user only: directories 0o700, files 0o600.

The embedded store (chDB) and the state stores (RocksDB) create their files from C++ threads
of this process, at any time while they are open (inserts, merges, flushes, compactions), with
the modes their code asks for (0o644, 0o755) less the process umask. The umask is therefore
the one control that reaches every one of those files; a umask set only around the open would
miss every file written later. So:

* `private_dir` creates (or tightens) the directory a store lives in, 0o700: even a file
  created with a wider mode cannot be reached through it;
* `private_umask` tightens the umask (its bits or'ed with 0o077) while a store is open and
  gives the previous one back when the last holder leaves (`hold`/`release` for holders that
  are not a ``with`` block, such as a store client);
* `keep_files_private` tightens it for the rest of the process: for the command line of
  commands that write data (workers, sink, replay, export), at start-up.

Nothing here runs at import: a program that imports the package keeps its umask until it
opens a local store.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "PRIVATE_DIR",
    "PRIVATE_FILE",
    "hold",
    "keep_files_private",
    "private_dir",
    "private_umask",
    "release",
]

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
_CLOSED = 0o077  # umask bits that keep group and other out

_lock = threading.Lock()
_holders = 0
_saved: int | None = None


def private_dir(path: Path) -> Path:
    """`path` created 0o700 (missing parents with the umask's default), or, if it exists and
    belongs to this user, its group and other permissions removed: a store created by an
    older version, or under a wider umask, is closed too. Returns `path`."""
    path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    st = path.stat()
    if stat.S_IMODE(st.st_mode) & _CLOSED and st.st_uid == os.geteuid():
        os.chmod(path, stat.S_IMODE(st.st_mode) & ~_CLOSED)
    return path


def hold() -> None:
    """Tighten the process umask until the matching `release` (nested holds count)."""
    global _holders, _saved
    with _lock:
        if _holders == 0:
            _saved = os.umask(_CLOSED)
            os.umask(_saved | _CLOSED)
        _holders += 1


def release() -> None:
    """End one `hold`; the last one restores the umask the first found."""
    global _holders, _saved
    with _lock:
        if _holders == 0:
            return
        _holders -= 1
        if _holders == 0 and _saved is not None:
            os.umask(_saved)
            _saved = None


@contextmanager
def private_umask() -> Iterator[None]:
    """Files and directories created inside the block (by any thread) are private."""
    hold()
    try:
        yield
    finally:
        release()


def keep_files_private() -> None:
    """Tighten the process umask for good: for a process whose job is writing local data.
    A later `release` of a `hold` cannot loosen it again."""
    global _saved
    with _lock:
        old = os.umask(_CLOSED)
        os.umask(old | _CLOSED)
        if _saved is not None:
            _saved |= _CLOSED
