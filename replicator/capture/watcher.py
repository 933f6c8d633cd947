"""Filesystem events from watchdog, delivered to the event loop as (root, dir, name) hints.

Events never carry data: they only say which directory (and, when known, which file) to look
at. Two adjustments to watchdog's inotify backend matter for latency and safety:

* watchdog holds an unmatched IN_MOVED_FROM for 0.5 s to pair it with its IN_MOVED_TO, and its
  queue is head-of-line blocking, so every temp+rename Dovecot does (index rewrites, uidlist,
  keywords) would delay *all* later events by half a second. We do not need pairs (both names
  are hints), so the delay is set to zero.
* an inotify queue overflow is only logged by watchdog; we listen for that log record and ask
  for a full rescan, so nothing is lost silently.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from replicator.dovecot.filekinds import is_transient
from replicator.paths import in_promote_area

log = logging.getLogger(__name__)

Hint = tuple[str, str, str | None]  # root name, relative dir, file name (None: whole dir)
_EVENTS: list[type[FileSystemEvent]] = [
    FileModifiedEvent, FileCreatedEvent, FileDeletedEvent, FileMovedEvent,
    DirCreatedEvent, DirDeletedEvent, DirMovedEvent,
]


def _no_move_pairing_delay() -> None:
    try:
        from watchdog.observers.inotify_move_event_grouper import InotifyMoveEventGrouper
        InotifyMoveEventGrouper.delay = 0
    except ImportError:  # watchdog < 7
        from watchdog.observers.inotify_buffer import InotifyBuffer
        InotifyBuffer.delay = 0


class _Handler(FileSystemEventHandler):
    def __init__(self, root: str, path: Path, sink: Callable[[list[Hint]], None]) -> None:
        self._root, self._base, self._sink = root, os.fsdecode(path), sink

    def on_any_event(self, event: FileSystemEvent) -> None:
        hints = [h for p in (event.src_path, event.dest_path) if p
                 if (h := self._hint(os.fsdecode(p), event.is_directory)) is not None]
        if hints:
            self._sink(hints)

    def _hint(self, path: str, is_dir: bool) -> Hint | None:
        rel = os.path.relpath(path, self._base)
        if rel.startswith(".."):
            return None
        rel = "" if rel == "." else rel
        if in_promote_area(rel):
            return None
        parent, _, name = rel.rpartition("/")
        if is_dir:
            return (self._root, rel, None) if rel else None
        if is_transient(name):
            return None
        return (self._root, parent, name)


class _OverflowSpy(logging.Handler):
    def __init__(self, on_overflow: Callable[[], None]) -> None:
        super().__init__(logging.WARNING)
        self._on_overflow = on_overflow

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            self._on_overflow()


class Watcher:
    """Watches every root recursively; hints reach `on_hints` on the loop, batched per wakeup."""

    def __init__(self, roots: Mapping[str, Path], loop: asyncio.AbstractEventLoop,
                 on_hints: Callable[[list[Hint]], None], on_overflow: Callable[[], None]) -> None:
        _no_move_pairing_delay()
        self._roots, self._loop = roots, loop
        self._on_hints, self._on_overflow = on_hints, on_overflow
        self._pending: list[Hint] = []
        self._lock = threading.Lock()
        self._observer = Observer()
        self._spy = _OverflowSpy(self._overflow_from_thread)

    def start(self) -> None:
        logging.getLogger("watchdog").addHandler(self._spy)
        for name, path in self._roots.items():
            self._observer.schedule(_Handler(name, path, self._from_thread), str(path),
                                    recursive=True, event_filter=_EVENTS)
        self._observer.start()

    def stop(self) -> None:
        logging.getLogger("watchdog").removeHandler(self._spy)
        self._observer.stop()
        self._observer.join(timeout=5)

    def _from_thread(self, hints: list[Hint]) -> None:
        with self._lock:
            wake = not self._pending
            self._pending.extend(hints)
        if wake:
            self._loop.call_soon_threadsafe(self._deliver)

    def _overflow_from_thread(self) -> None:
        self._loop.call_soon_threadsafe(self._on_overflow)

    def _deliver(self) -> None:
        with self._lock:
            hints, self._pending = self._pending, []
        if hints:
            self._on_hints(hints)
