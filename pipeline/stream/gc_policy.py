"""The garbage collector's policy for a long-running worker process (`GcPolicy`)."""

from __future__ import annotations

import gc
import time

__all__ = ["GcPolicy"]


class GcPolicy:
    """Cyclic GC for a process that keeps hundreds of thousands of call states alive.

    With CPython's defaults a collection runs every 700 allocations and the older generations'
    passes rescan every remembered state: profiled, a third of a worker's time went to GC
    pauses, billed to whatever line allocated. After each cycle, what survived is moved to the
    permanent generation (after a young pass, so that the cycle's own reference cycles -
    futures, fetch results - are collected first), and the threshold is raised as in the
    offline replay. Garbage cycles among frozen objects would never be found, so every
    `full_every_s` everything is thawed and fully collected once.
    """

    def __init__(self, gen0: int = 100_000, full_every_s: float = 600.0) -> None:
        self.full_every_s = full_every_s
        self.last_full = time.monotonic()
        gc.set_threshold(gen0, *gc.get_threshold()[1:])

    def after_cycle(self) -> None:
        now = time.monotonic()
        if now - self.last_full >= self.full_every_s:
            gc.unfreeze()
            gc.collect()
            self.last_full = now
        else:
            gc.collect(0)
        gc.freeze()
