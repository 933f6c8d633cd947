"""Filesystem events straight from inotify, read on the event loop (no threads).

watchdog (see watcher.py) delivers an event through three threads before it reaches the loop;
measured here that costs ~120 µs at the median and far more under load, a large part of a
1 ms replication budget. This backend registers the inotify descriptor with the loop, so an
event becomes a hint in one wake-up. Like watchdog it watches every directory below each root,
adds watches for directories as they appear (hinting them whole, since files may have been
written before the watch existed), re-registers renamed subtrees, and turns a queue overflow into
a full rescan. Hints carry no data: they only say where to look.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import struct
from collections.abc import Callable, Mapping
from pathlib import Path

from replicator.capture.watcher import Hint
from replicator.dovecot.filekinds import is_transient
from replicator.paths import is_promote_area

log = logging.getLogger(__name__)

IN_MODIFY, IN_ATTRIB, IN_MOVED_FROM, IN_MOVED_TO = 0x2, 0x4, 0x40, 0x80
IN_CREATE, IN_DELETE, IN_DELETE_SELF, IN_MOVE_SELF = 0x100, 0x200, 0x400, 0x800
IN_Q_OVERFLOW, IN_IGNORED, IN_ONLYDIR, IN_DONT_FOLLOW = 0x4000, 0x8000, 0x1000000, 0x2000000
IN_EXCL_UNLINK, IN_ISDIR = 0x4000000, 0x40000000
IN_NONBLOCK, IN_CLOEXEC = 0o4000, 0o2000000
MASK = (IN_MODIFY | IN_ATTRIB | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
        | IN_DELETE_SELF | IN_ONLYDIR | IN_DONT_FOLLOW | IN_EXCL_UNLINK)
_EVENT = struct.Struct("iIII")
READ_BYTES = 1 << 16
LONGEST_EVENT = _EVENT.size + 256  # a name of NAME_MAX (255) bytes, NUL-padded
_libc = ctypes.CDLL(None, use_errno=True)


class InotifyWatcher:
    """Same contract as watcher.Watcher: `start()`, `stop()`, hints to `on_hints`."""

    def __init__(self, roots: Mapping[str, Path], loop: asyncio.AbstractEventLoop,
                 on_hints: Callable[[list[Hint]], None], on_overflow: Callable[[], None]) -> None:
        self._roots, self._loop = roots, loop
        self._on_hints, self._on_overflow = on_hints, on_overflow
        self._fd = -1
        self._paths: dict[int, tuple[str, str]] = {}
        self._wds: dict[tuple[str, str], int] = {}
        self._limit_logged = False
        self.failed_watches = 0  # directories that exist but could not be watched
        self.overflows = 0  # queue overflows seen (counted as read: before on_overflow runs)
        # Bumped whenever a watch is added or dropped: what `watch_of` answers for any
        # directory can only have changed if this did (SyncCommit.keys_for keeps its path
        # proofs while it holds).
        self.generation = 0

    def start(self) -> None:
        self._fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        for name in self._roots:
            self._watch_tree(name, "")
        self._loop.add_reader(self._fd, self._readable)

    def stop(self) -> None:
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1

    @property
    def watches(self) -> int:
        return len(self._paths)

    def watching(self, root: str, reldir: str) -> bool:
        """Whether a watch covers `root/reldir` (its changes raise events)."""
        return (root, reldir) in self._wds

    def watch_of(self, root: str, reldir: str) -> int | None:
        """The watch descriptor covering `root/reldir`, if one does (see capture.keptdirs)."""
        return self._wds.get((root, reldir))

    def _watch_tree(self, root: str, reldir: str) -> list[Hint]:
        """Watch `reldir` and every directory below it; hints for each (whole directory).

        Each directory is watched *before* it is listed: a subdirectory created after the
        listing then raises an event, one created before is in the listing. (os.walk lists
        first; a directory created between its listing and the watch was missed for good.)"""
        hints: list[Hint] = []
        stack = [reldir]
        while stack:
            rel = stack.pop()
            path = os.path.join(self._roots[root], rel) if rel else str(self._roots[root])
            if not self._add_watch(root, rel, path):
                continue
            hints.append((root, rel, None))
            try:
                with os.scandir(path) as entries:
                    stack += [f"{rel}/{e.name}" if rel else e.name for e in entries
                              if e.is_dir(follow_symlinks=False)
                              and not is_promote_area(rel, e.name)]
            except (FileNotFoundError, NotADirectoryError):
                continue
        return hints

    def _add_watch(self, root: str, rel: str, path: str) -> bool:
        wd = _libc.inotify_add_watch(self._fd, os.fsencode(path), MASK)
        if wd < 0:
            self._watch_failed(ctypes.get_errno(), path)
            return False
        self._paths[wd] = (root, rel)
        self._wds[(root, rel)] = wd
        self.generation += 1
        return True

    def _watch_failed(self, err: int, path: str) -> None:
        if err not in (errno.ENOENT, errno.ENOTDIR):  # gone, or not a directory: no loss
            self.failed_watches += 1
        if err == errno.ENOSPC and not self._limit_logged:
            self._limit_logged = True
            log.error("inotify watch limit reached at %d directories (raise "
                      "fs.inotify.max_user_watches); changes below %s are found only by the "
                      "periodic rescan", len(self._paths), path)
        elif err not in (errno.ENOENT, errno.ENOTDIR, errno.ENOSPC):
            log.warning("cannot watch %s: %s", path, os.strerror(err))

    def _forget_tree(self, root: str, reldir: str) -> None:
        prefix = reldir + "/"
        for key in [k for k in self._wds if k[0] == root and (k[1] == reldir or
                                                               k[1].startswith(prefix))]:
            wd = self._wds.pop(key)
            self._paths.pop(wd, None)
            _libc.inotify_rm_watch(self._fd, wd)
            self.generation += 1

    def drain(self) -> None:
        """Deliver every event queued so far, now (the sync-commit path calls this)."""
        if self._fd >= 0:
            self._readable()

    def _readable(self) -> None:
        """Read every queued event. A read returns as many whole events as fit, so one that
        leaves room for another event of the longest name emptied the queue: no further read
        is made to hear EAGAIN (the drain on every sync commit's path read twice)."""
        hints: list[Hint] = []
        while True:
            try:
                data = os.read(self._fd, READ_BYTES)
            except BlockingIOError:
                break
            self._parse(data, hints)
            if len(data) <= READ_BYTES - LONGEST_EVENT:
                break
        if hints:
            self._on_hints(hints)

    def _parse(self, data: bytes, hints: list[Hint]) -> None:
        pos = 0
        while pos + _EVENT.size <= len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, pos)
            raw = data[pos + _EVENT.size : pos + _EVENT.size + length].rstrip(b"\0")
            pos += _EVENT.size + length
            self._event(wd, mask, os.fsdecode(raw), hints)

    def _event(self, wd: int, mask: int, name: str, hints: list[Hint]) -> None:
        if mask & IN_Q_OVERFLOW:  # on_overflow says so in the log and rescans
            self.overflows += 1
            self._loop.call_soon(self._on_overflow)
            return
        where = self._paths.get(wd)
        if where is None:
            return
        root, reldir = where
        if mask & IN_IGNORED:
            self._paths.pop(wd, None)
            self._wds.pop(where, None)
            self.generation += 1
            return
        if mask & (IN_DELETE_SELF | IN_MOVE_SELF):
            hints.append((root, reldir, None))
            return
        if mask & IN_ISDIR:
            self._dir_event(root, reldir, name, mask, hints)
        elif not is_transient(name):
            hints.append((root, reldir, name))

    def _dir_event(self, root: str, reldir: str, name: str, mask: int,
                   hints: list[Hint]) -> None:
        if is_promote_area(reldir, name):
            return
        child = f"{reldir}/{name}" if reldir else name
        hints.append((root, reldir, None))
        if mask & (IN_CREATE | IN_MOVED_TO):
            self._forget_tree(root, child)
            hints += self._watch_tree(root, child)
        elif mask & (IN_MOVED_FROM | IN_DELETE):
            self._forget_tree(root, child)
            hints.append((root, child, None))
