"""Descriptors of watched directories, kept open between sync commits.

A commit's read of a mailbox directory opened it component by component below its root
(`snapshot.open_dir_beneath`: four opens and four closes for `u1/mailboxes/INBOX`) on every
commit. A descriptor kept from the last commit is as good while inotify still watches the
directory under the same watch descriptor: the watcher forgets a directory's watch (and its
whole subtree's) at the event that moves or removes it or any directory above it, and a
directory made again at the same path gets a new watch descriptor. So a kept descriptor whose
watch descriptor is the watcher's current one for that path names the directory at that path,
reached without a symlink, once the events queued so far have been read (the caller drains
them first, as every sync commit does).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

from replicator.capture.snapshot import open_dir_beneath
from replicator.sender.batcher import DirKey

MAX_KEPT = 256  # directories of the users committing now; a descriptor each


class KeptDirs:
    """Directory descriptors by (root, reldir), each with the watch descriptor it was opened
    under; the least recently used is closed past MAX_KEPT."""

    def __init__(self, roots: Mapping[str, Path]) -> None:
        self._roots = roots
        self._kept: OrderedDict[DirKey, tuple[int, int]] = OrderedDict()  # key -> (wd, fd)

    def get(self, key: DirKey, wd: int) -> int | None:
        """A descriptor of `key`'s directory, watched as `wd` now: the kept one if it was
        opened under that watch, else a new one (kept); None if it is not a directory there.
        The caller must not close it."""
        kept = self._kept.get(key)
        if kept is not None:
            if kept[0] == wd:
                self._kept.move_to_end(key)
                return kept[1]
            self._drop(key)
        fd = open_dir_beneath(self._roots[key[0]], key[1])
        if fd is None:
            return None
        self._kept[key] = (wd, fd)
        if len(self._kept) > MAX_KEPT:
            self._drop(next(iter(self._kept)))
        return fd

    def _drop(self, key: DirKey) -> None:
        os.close(self._kept.pop(key)[1])

    def close(self) -> None:
        while self._kept:
            self._drop(next(iter(self._kept)))

    def __len__(self) -> int:
        return len(self._kept)
