"""A full replica filesystem: said once per episode, counted, and never fatal to bookkeeping.

`replica_dir` is a tmpfs of fixed size; when peers' copies outgrow it, a batch cannot be
applied. That batch is refused (NACK: the origin keeps it and resends the directory), but the
receiver must still record that the directory is broken and what it holds, or a restart would
trust a half-written copy. A small reserve (an unnamed file in `replica_dir/.staging`, which
no one sees) is kept for exactly that: when a bookkeeping write finds the filesystem full, the
reserve is freed for it and taken again at once, so batches never eat into it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from replicator.mounts import filesystem_type

log = logging.getLogger(__name__)
RESERVE_BYTES = 64 << 10  # a few state and journal writes on a full tmpfs (pages of 4 KiB)
PAGE = 4096
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def is_full(exc: BaseException) -> bool:
    """Whether `exc` says the filesystem (or the daemon's quota on it) is full."""
    return isinstance(exc, OSError) and exc.errno in FULL_ERRNOS


class SpaceGuard:
    """The reserve of one `replica_dir`, and whether it is full now (an episode)."""

    def __init__(self, replica_dir: Path, staging: Path) -> None:
        self.replica_dir, self.staging = replica_dir, staging
        self.full = False
        self.refusals = 0  # batches refused because the filesystem was full, since start
        self._fd: int | None = None  # an unnamed file holding the reserve's pages
        self._size = 0
        self.arm()

    def arm(self) -> int:
        """Take the reserve again (as much of it as fits); its size now."""
        try:
            if self._fd is None:
                self._fd, self._size = _unnamed_file(self.staging), 0
            while self._size < RESERVE_BYTES:  # zeros, a page at a time: each is allocated
                self._size += os.pwrite(self._fd, bytes(PAGE), self._size)
        except OSError:
            pass  # full: keep what fitted
        return self._size

    def __del__(self) -> None:
        if self._fd is not None:
            os.close(self._fd)

    def on_full(self, origin: str) -> None:
        """A batch did not fit: count it, and tell the operator once per episode."""
        self.refusals += 1
        if self.full:
            return
        self.full = True
        log.error("replica filesystem %s (%s) is full: %s; refusing %s's batches that do not "
                  "fit (the origin keeps and resends them; sync commits with the fail policy "
                  "fail meanwhile). Make replica_dir larger or hold fewer peers' copies here",
                  self.replica_dir, filesystem_type(self.replica_dir), self.usage(), origin)

    @contextlib.contextmanager
    def released(self) -> Iterator[None]:
        """Room for the receiver's own bookkeeping (state, journal) on a full filesystem: the
        reserve is freed for the block, and taken again right after, before any batch could
        use the room."""
        if self._fd is not None:
            os.close(self._fd)  # an unnamed file: closing it frees its pages
            self._fd, self._size = None, 0
        try:
            yield
        finally:
            self.arm()

    def after_success(self) -> None:
        """A batch applied: if the filesystem was full and has room again, end the episode."""
        if not self.full or self.free_bytes() < 2 * RESERVE_BYTES:
            return
        self.arm()
        self.full = False
        log.warning("replica filesystem %s has room again (%s)", self.replica_dir, self.usage())

    def free_bytes(self) -> int:
        try:
            st = os.statvfs(self.replica_dir)
        except OSError:
            return 0
        return st.f_bavail * st.f_frsize

    def usage(self) -> str:
        """'<used> of <size> KiB used (<pct>%)', for the operator."""
        try:
            st = os.statvfs(self.replica_dir)
        except OSError as exc:
            return f"usage unknown: {exc.strerror}"
        size = st.f_blocks * st.f_frsize
        used = size - st.f_bfree * st.f_frsize
        return f"{used >> 10} of {size >> 10} KiB used ({100 * used // max(size, 1)}%)"


def _unnamed_file(directory: Path) -> int:
    """A file in `directory` that no one can see or open (O_TMPFILE; else created and
    unlinked at once): the reserve never shows in the replica."""
    try:
        return os.open(directory, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600)
    except OSError:
        path = directory / f".reserve-{os.getpid()}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        os.unlink(path)
        return fd
