"""When the capture reads a directory a watcher event marked: at once, or, while a sync-commit
plugin is asking, when its FLUSH arrives (so a commit is read once, finished)."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

from replicator.capture.pipeline import Capture
from replicator.sender.batcher import Draft

KEY = ("index", "")


def _capture(root: Path, emitted: list[Draft]) -> Capture:
    capture = Capture({"index": root}, "inotify", 1 << 20, emitted.extend, Counter())
    capture.start(asyncio.get_running_loop())
    capture.hint_grace = 3600.0  # "later" that no test run reaches: only a FLUSH ends it
    return capture


async def _loop_turns() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


def test_an_event_is_read_at_once_without_a_sync_commit_plugin(tmp_path: Path) -> None:
    async def scenario() -> None:
        emitted: list[Draft] = []
        capture = _capture(tmp_path, emitted)
        try:
            (tmp_path / "dovecot.index.log").write_bytes(b"log")
            capture.catch_up(set())  # inotify's event, queued by the write, delivered now
            await _loop_turns()
            assert not capture.pending({KEY})
            assert [d.reldir for d in emitted] == [""]
        finally:
            capture.stop()

    asyncio.run(scenario())


def test_while_a_plugin_asks_an_event_waits_for_its_flush(tmp_path: Path) -> None:
    async def scenario() -> None:
        emitted: list[Draft] = []
        capture = _capture(tmp_path, emitted)
        try:
            capture.expect_flush_requests()
            (tmp_path / "dovecot.index.log").write_bytes(b"log")
            capture.catch_up(set())  # inotify's event, queued by the write, delivered now
            await _loop_turns()
            assert capture.pending({KEY}) and not emitted  # still counted as on its way
            capture.catch_up({KEY})  # what the FLUSH does
            capture.flush()
            assert not capture.pending() and [d.reldir for d in emitted] == [""]
        finally:
            capture.stop()

    asyncio.run(scenario())


def test_a_lock_release_is_not_held_back_by_a_waiting_event(tmp_path: Path) -> None:
    async def scenario() -> None:
        emitted: list[Draft] = []
        capture = _capture(tmp_path, emitted)
        try:
            capture.expect_flush_requests()
            (tmp_path / "dovecot.index.log").write_bytes(b"log")
            capture.catch_up(set())  # inotify's event, queued by the write, delivered now
            capture._retry({KEY: set()})  # LockWaiter: Dovecot let go of a lock
            await _loop_turns()
            assert not capture.pending() and [d.reldir for d in emitted] == [""]
        finally:
            capture.stop()

    asyncio.run(scenario())
