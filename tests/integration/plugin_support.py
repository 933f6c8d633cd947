"""What the sync plugin's test files share: the Dovecot settings that count its events, a poll
of those counts, and how to override one of its settings on a command line. Where the plugin is
built: `replicator.testing.native.sync_plugin_dir()` (the `plugin_dir` fixture)."""

from __future__ import annotations

import time

from replicator.dovecot.instance import DovecotInstance

MSG = b"From: a@example.org\r\nTo: u1@example.org\r\nSubject: t\r\n\r\nbody\r\n"
METRICS = "".join(f"metric {n} {{\n  filter = event={n}\n}}\n"
                  for n in ("replicator_sync_degraded", "replicator_sync_failed",
                            "replicator_sync_refused"))
CRASH_MARKERS = ("Panic:", "Fatal:", "killed with signal")


def stats_count(inst: DovecotInstance, name: str, expected: int) -> int:
    """How many events of that name Dovecot's stats service counted, polled for until it is
    `expected` (events reach the stats process asynchronously) or 10 s pass."""
    deadline = time.monotonic() + 10.0
    while True:
        rows = [ln.split("\t") for ln in inst.doveadm("stats", "dump").splitlines()]
        count = next(int(r[2]) for r in rows if r[0] == name)
        if count == expected or time.monotonic() > deadline:
            return count
        time.sleep(0.01)


