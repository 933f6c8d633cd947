"""Keeping the garbage collector's full passes off the commit path.

A full collection walks every object the collector tracks, on the event loop's thread, and a
sync commit that arrives meanwhile waits for it. The daemon's long-lived objects are mostly its
manifest, its replicas' journals and its modules: a sender holding 5 000 mailboxes tracks about
170 000-190 000 objects, and a full pass over them took 52-106 ms on the 2-vCPU bench VM
(`python -m bench.commit_tail`; a commit there takes under 1 ms). Python starts one whenever
the objects promoted to the oldest generation since the last one reach a quarter of those that
survived it, which a busy daemon replacing manifest entries reaches again and again.

So the daemon keeps what survives in the permanent generation, which no collection walks:
`settle` (a full collection, then gc.freeze) once it has loaded its state, before it serves,
and `HeapPolicy.tick` on a timer, which freezes (no walk: 5 µs here) and settles again only
once the process has grown by a quarter since the last settle. Objects frozen while alive are
still freed by their reference counts; only reference cycles that become garbage after being
frozen (a closed connection's streams, say) wait for the next settle, which unfreezes first:
they cost at most that quarter of memory. The commit path itself makes no such cycles
(tests/unit/test_receiver_garbage.py). Growth is the peak resident size, one getrusage call:
counting the frozen objects (gc.get_freeze_count) walks them all, 4-12 ms here.
"""

from __future__ import annotations

import gc
import logging
import resource
import time

log = logging.getLogger(__name__)
GROWTH = 1.25  # peak resident size, relative to the last settle's, that makes a tick settle
TICK_SECONDS = 10.0  # how often the daemon ticks: survivors since are walked by collections


def settle() -> int:
    """A full collection of everything (frozen objects included), then freeze what is left;
    returns how many objects are frozen."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class HeapPolicy:
    """When to freeze and when to settle; `tick` is called every TICK_SECONDS."""

    def __init__(self) -> None:
        self.settled = 0  # objects frozen by the last settle
        self.settled_size = 0  # peak resident size (KiB) after the last settle
        self.settles = 0
        self.last_pause = 0.0  # seconds the last settle took

    def start(self) -> None:
        """Settle once the daemon's state is loaded: nobody waits on a commit yet."""
        self._settle("start-up")

    def tick(self) -> None:
        """Freeze what survived since the last tick; then settle if the process has grown by
        GROWTH since the last settle (new mailboxes, or frozen cycles that became garbage)."""
        gc.freeze()
        if peak_size() > self.settled_size * GROWTH:
            self._settle("grown")

    def _settle(self, why: str) -> None:
        started = time.monotonic()
        self.settled = settle()
        self.settled_size = peak_size()
        self.settles += 1
        self.last_pause = time.monotonic() - started
        log.debug("heap settled (%s): %d objects frozen in %.1f ms", why, self.settled,
                  self.last_pause * 1000)


def peak_size() -> int:
    """The process's peak resident size, in KiB (what Python frees it rarely gives back, so
    for a daemon this is about its size now)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
