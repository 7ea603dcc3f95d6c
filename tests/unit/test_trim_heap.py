"""A recovery's freed heap goes back to the system: records passed through malloc and freed,
with a few survivors spread among them (as a catch-up leaves its heap), kept the process's
RSS hundreds of MB high until trimmed."""

from __future__ import annotations

import gc
import sys

import pytest

from pipeline.state.restore import trim_heap


def rss_mb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 >> 20


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc_trim")
def test_the_freed_heap_of_a_recovery_is_given_back() -> None:
    records = [bytes(4000) + i.to_bytes(4, "little") for i in range(100_000)]  # ~400 MB
    survivors = records[::50]
    del records
    gc.collect()
    freed = rss_mb()
    trim_heap()
    assert rss_mb() < freed - 200, (freed, rss_mb())
    assert len(survivors) == 2000
