"""When the capture reads a directory a watcher event marked: at once, or, while a sync-commit
plugin is asking, when its FLUSH arrives (so a commit is read once, finished)."""

from __future__ import annotations

import asyncio
import os
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from replicator.capture import pipeline
from replicator.capture.inotify import _EVENT, IN_Q_OVERFLOW, InotifyWatcher
from replicator.capture.pipeline import Capture
from replicator.capture.snapshot import stat_key
from replicator.sender.batcher import Draft, _trails

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


def _known_dirs(root: Path, then: Callable[[Capture], Awaitable[None]]) -> None:
    """A capture on `root` holding directories a/ and b/ with a log each, already known to
    its manifest (as after the daemon's start)."""
    for name in ("a", "b"):
        (root / name).mkdir()
        (root / name / "dovecot.index.log").write_bytes(b"log")

    async def scenario() -> None:
        capture = Capture({"index": root}, "inotify", 1 << 20, lambda drafts: None, Counter())
        capture.start(asyncio.get_running_loop())
        capture.flush()  # what the start's events marked
        try:
            await then(capture)
        finally:
            capture.stop()

    asyncio.run(scenario())


A, B = ("index", "a"), ("index", "b")


def test_a_flush_reads_only_the_directories_events_marked(tmp_path: Path) -> None:
    async def check(capture: Capture) -> None:
        assert capture.catch_up({A, B}) == set()  # nothing changed: nothing to read
        (tmp_path / "a" / "dovecot.index.log").write_bytes(b"log, longer")
        assert capture.catch_up({A, B}) == {A}

    _known_dirs(tmp_path, check)


def test_after_lost_events_every_directory_is_read_until_a_rescan_made_up_for_them(
        tmp_path: Path) -> None:
    async def check(capture: Capture) -> None:
        watcher = capture._watcher
        assert isinstance(watcher, InotifyWatcher)
        watcher._parse(_EVENT.pack(-1, IN_Q_OVERFLOW, 0, 0), [])  # the kernel's record
        assert capture.catch_up({A, B}) == {A, B}
        capture.flush()
        await capture.rescan()
        assert capture.catch_up({A, B}) == set()

    _known_dirs(tmp_path, check)


def test_a_directory_without_a_watch_is_read(tmp_path: Path) -> None:
    async def check(capture: Capture) -> None:
        watcher = capture._watcher
        assert isinstance(watcher, InotifyWatcher)
        watcher._forget_tree(*B)  # as when the watch limit refused it
        (tmp_path / "b" / "dovecot.index.log").write_bytes(b"log, unseen")
        assert capture.catch_up({A, B}) == {B}

    _known_dirs(tmp_path, check)


QUEUE = Path("/proc/sys/fs/inotify/max_queued_events")


@pytest.mark.skipif(os.geteuid() != 0, reason="sets fs.inotify.max_queued_events: needs root")
def test_a_change_whose_event_the_kernel_dropped_is_still_read(tmp_path: Path) -> None:
    """A real queue overflow: the capture's inotify instance gets a queue of 16 events (the
    limit applies to instances made while it is set), a burst overflows it, and the event of
    the change that follows is dropped by the kernel. The FLUSH must still find it."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "dovecot.index.log").write_bytes(b"log")

    async def scenario() -> None:
        emitted: list[Draft] = []
        capture = Capture({"index": tmp_path}, "inotify", 1 << 20, emitted.extend, Counter())
        limit = QUEUE.read_text()
        QUEUE.write_text("16")
        try:
            capture.start(asyncio.get_running_loop())
        finally:
            QUEUE.write_text(limit)
        try:
            capture.flush()
            for i in range(64):  # the loop does not run meanwhile: nothing drains the queue
                (tmp_path / "a" / f"burst{i}").write_bytes(b"x")
            (tmp_path / "b" / "dovecot.index.log").write_bytes(b"log, grown past the queue")
            assert capture.catch_up({B}) == {B}
            assert capture.flush_for_commit({B})
            shipped = [op.path for d in emitted for op in d.ops]
            assert "b/dovecot.index.log" in shipped
        finally:
            capture.stop()

    asyncio.run(scenario())


NAMES = ("dovecot.index.log", "dovecot.index.cache", "dovecot-uidlist", "dovecot-keywords",
         "dovecot.index", "dovecot.index.log.2")
KEY_BOX = ("index", "box")


def _change(box: Path, rng: random.Random) -> str:
    """One change of the kinds Dovecot makes in a mailbox directory; what it was."""
    name = rng.choice(NAMES)
    path = box / name
    action = rng.choice(("append", "append", "rewrite", "delete", "rename", "chmod",
                         "replace", "subdir"))
    if action == "append" or (not path.exists() and action != "subdir"):
        with path.open("ab") as f:
            f.write(rng.randbytes(rng.randrange(1, 200)))
    elif action == "rewrite":
        with path.open("r+b") as f:
            f.write(rng.randbytes(8))
    elif action == "delete":
        path.unlink()
    elif action == "rename":
        path.rename(box / rng.choice(NAMES))
    elif action == "chmod":
        path.chmod(rng.choice((0o600, 0o640)))
    elif action == "replace":  # Dovecot's way for indexes: a temp file renamed over it
        (box / "dovecot.index.tmp").write_bytes(rng.randbytes(64))
        (box / "dovecot.index.tmp").rename(path)
    else:
        (box / f"sub{rng.randrange(3)}").mkdir(exist_ok=True)
    return f"{action} {name}"


@pytest.mark.parametrize("seed", range(4))
def test_a_commit_read_of_inotify_named_changes_leaves_the_manifest_as_a_listing_would(
        tmp_path: Path, seed: int) -> None:
    """A directory only file events marked since its last read is not listed by a sync
    commit's read: only the names the events carried (and racy files) are looked at. After
    each random change and that read, the manifest must hold every file the directory holds
    (but the index rewrites a commit leaves for later), each with its current stat, and no
    other."""
    rng = random.Random(seed)
    box = tmp_path / "box"
    box.mkdir()
    (box / "dovecot.index.log").write_bytes(b"log")

    async def check(capture: Capture) -> None:
        named_reads = 0
        for step in range(150):
            what = _change(box, rng)
            if rng.randrange(6) == 0:
                capture.flush()  # the trailing flush, `trailing_delay` after a commit
            capture.drain_events()
            named_reads += KEY_BOX in capture._named
            if KEY_BOX in capture._dirty and not capture.flush_for_commit({KEY_BOX}):
                capture.flush()
            entry = capture.manifest.dir(*KEY_BOX)
            assert entry is not None
            on_disk = {p.name: p.lstat() for p in box.iterdir() if p.is_file()
                       and p.name != "dovecot.index.tmp"}
            waiting = capture._dirty.get(KEY_BOX) or set()
            for name, st in on_disk.items():
                if name in waiting and _trails(name):
                    continue  # an index rewrite, left for the trailing flush
                shipped = entry.files.get(name)
                assert shipped is not None, (step, what, name)
                assert shipped.stat == stat_key(st), (step, what, name)
            assert set(entry.files) - set(on_disk) <= {n for n in waiting if _trails(n)}, \
                (step, what)
            # a new subdirectory is recorded by its own (whole) read; none is lost here
            assert entry.subdirs <= {p.name for p in box.iterdir() if p.is_dir()}, (step, what)
        assert named_reads > 50 and capture.counters["unlisted_reads"] > 50

    async def scenario() -> None:
        capture = Capture({"index": tmp_path}, "inotify", 1 << 20, lambda drafts: None,
                          Counter())
        capture.start(asyncio.get_running_loop())
        capture.flush()
        try:
            await check(capture)
        finally:
            capture.stop()

    asyncio.run(scenario())


def test_a_kept_directory_descriptor_never_reads_a_directory_moved_away(tmp_path: Path) -> None:
    """A commit's read keeps the directory's descriptor for the next commit. When the mail
    user moves the directory away and makes a new one at its path, the next read is of the
    new directory, not of the one moved (which is still written to)."""
    box = tmp_path / "box"
    box.mkdir()
    (box / "dovecot.index.log").write_bytes(b"first")
    emitted: list[Draft] = []

    async def scenario() -> None:
        capture = Capture({"index": tmp_path}, "inotify", 1 << 20, emitted.extend, Counter())
        capture.start(asyncio.get_running_loop())
        capture.flush()
        try:
            with (box / "dovecot.index.log").open("ab") as f:
                f.write(b", second")
            capture.drain_events()
            assert capture.flush_for_commit({KEY_BOX})
            assert len(capture._kept_dirs) == 1  # kept for the next commit
            box.rename(tmp_path / "moved")
            with (tmp_path / "moved" / "dovecot.index.log").open("ab") as f:
                f.write(b", written where it went")
            box.mkdir()
            (box / "dovecot.index.log").write_bytes(b"the new mailbox")
            emitted.clear()
            capture.drain_events()
            if not capture.flush_for_commit({KEY_BOX}):
                capture.flush()
            shipped = b"".join(op.data for d in emitted if d.reldir == "box" for op in d.ops)
            assert b"the new mailbox" in shipped and b"where it went" not in shipped
        finally:
            capture.stop()
        assert len(capture._kept_dirs) == 0  # closed with the capture

    asyncio.run(scenario())


def test_a_missing_directory_below_a_watched_one_is_not_marked(tmp_path: Path) -> None:
    """A FLUSH names the mailbox's CONTROL directory, which mdbox never makes: below a
    watched directory the watcher proves it missing, so nothing is marked or read; once it
    is made, its event marks it like any other."""
    missing = ("index", "a/mailboxes/INBOX")

    async def check(capture: Capture) -> None:
        assert capture.catch_up({missing}) == set()
        assert missing not in capture._dirty
        (tmp_path / "a" / "mailboxes" / "INBOX").mkdir(parents=True)
        assert capture.catch_up({missing}) == {missing}

    _known_dirs(tmp_path, check)


def _many_dirs(root: Path, count: int, then: Callable[[Capture, list[int]], Awaitable[None]]
               ) -> None:
    """A capture on `root` holding `count` known directories; `then` gets it and the number
    of directories each flush read."""
    for n in range(count):
        (root / f"d{n}").mkdir()

    async def scenario() -> None:
        capture = Capture({"index": root}, "inotify", 1 << 20, lambda drafts: None, Counter())
        capture.start(asyncio.get_running_loop())
        capture.flush()
        read: list[int] = []
        real_flush = capture.flush

        def counted() -> None:
            read.append(len(capture._dirty))
            real_flush()

        capture.flush = counted  # type: ignore[method-assign]
        try:
            await then(capture, read)
        finally:
            capture.stop()

    asyncio.run(scenario())


def test_a_rescan_starts_no_slice_while_a_sync_commit_is_in_flight(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A commit that arrives during a rescan waits for at most the slice it arrived in: the
    next starts once no commit is in flight."""
    monkeypatch.setattr(pipeline, "RESCAN_YIELD", 3600.0)  # only the commit's end lets it on

    async def check(capture: Capture, read: list[int]) -> None:
        with capture.commit_in_flight():
            rescan = asyncio.create_task(capture.rescan())
            await _loop_turns()
            assert read == [] and not rescan.done()
        await rescan
        assert sum(read) == 3 * pipeline.RESCAN_SLICE + 1  # the root too
        assert max(read) <= pipeline.RESCAN_SLICE

    _many_dirs(tmp_path, 3 * pipeline.RESCAN_SLICE, check)


def test_commits_without_a_pause_delay_a_rescan_but_never_stop_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "RESCAN_YIELD", 0.0)

    async def check(capture: Capture, read: list[int]) -> None:
        with capture.commit_in_flight():
            await capture.rescan()
        assert sum(read) == 2 * pipeline.RESCAN_SLICE + 1

    _many_dirs(tmp_path, 2 * pipeline.RESCAN_SLICE, check)
