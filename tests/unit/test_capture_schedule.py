"""When the capture reads a directory a watcher event marked: at once, or, while a sync-commit
plugin is asking, when its FLUSH arrives (so a commit is read once, finished)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

from replicator.capture.pipeline import Capture
from replicator.sender.batcher import Draft

KEY = ("index", "")


def _with_one_change(root: Path, plugin_asking: bool,
                     then: Callable[[Capture, list[Draft]], Awaitable[None]]) -> None:
    """A capture on `root`; Dovecot's write of a log and inotify's event for it delivered
    (after a FLUSH was seen if `plugin_asking`); then `then`."""
    async def scenario() -> None:
        emitted: list[Draft] = []
        capture = Capture({"index": root}, "inotify", 1 << 20, emitted.extend, Counter())
        capture.start(asyncio.get_running_loop())
        capture.hint_grace = 3600.0  # "later" that no test run reaches: only a FLUSH ends it
        try:
            if plugin_asking:
                capture.expect_flush_requests()
            (root / "dovecot.index.log").write_bytes(b"log")
            capture.catch_up(set())  # inotify's event, queued by the write, delivered now
            await then(capture, emitted)
        finally:
            capture.stop()

    asyncio.run(scenario())


async def _loop_turns() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


def test_an_event_is_read_at_once_without_a_sync_commit_plugin(tmp_path: Path) -> None:
    async def check(capture: Capture, emitted: list[Draft]) -> None:
        await _loop_turns()
        assert not capture.pending({KEY})
        assert [d.reldir for d in emitted] == [""]

    _with_one_change(tmp_path, False, check)


def test_while_a_plugin_asks_an_event_waits_for_its_flush(tmp_path: Path) -> None:
    async def check(capture: Capture, emitted: list[Draft]) -> None:
        await _loop_turns()
        assert capture.pending({KEY}) and not emitted  # still counted as on its way
        capture.catch_up({KEY})  # what the FLUSH does
        capture.flush()
        assert not capture.pending() and [d.reldir for d in emitted] == [""]

    _with_one_change(tmp_path, True, check)


def test_a_lock_release_is_not_held_back_by_a_waiting_event(tmp_path: Path) -> None:
    async def check(capture: Capture, emitted: list[Draft]) -> None:
        capture._retry({KEY: set()})  # LockWaiter: Dovecot let go of a lock
        await _loop_turns()
        assert not capture.pending() and [d.reldir for d in emitted] == [""]

    _with_one_change(tmp_path, True, check)
