"""fcntl locks the way Dovecot's writers expect readers to take them.

Dovecot rewrites its caches (and appends to its logs) under a whole-file exclusive fcntl lock
(lock_method = fcntl), held through the write and, with mail_fsync = always, the fdatasync.
We read a cache under a shared lock so we never see half a record (logs without one:
dovecot.filekinds.FCNTL_LOCKED). Our locks are open-file-description (OFD) locks: they
conflict with Dovecot's classic ones, but unlike classic locks, closing one descriptor of ours
never drops another lock we hold on the same file.

When Dovecot holds the lock, the event loop must not block. `LockWaiter` waits in a short-lived
thread (a blocking F_OFD_SETLKW returns the instant Dovecot unlocks, measured ~1 ms earlier than
a 1 ms retry timer while Dovecot's fdatasync runs) and then calls back on the loop.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import struct
import threading
from collections.abc import Callable

_FLOCK = struct.Struct("@hhqqi4x")  # struct flock on Linux x86_64/aarch64
MAX_WAITERS = 16


def _flock(kind: int) -> bytes:
    return _FLOCK.pack(kind, os.SEEK_SET, 0, 0, 0)


def try_read_lock(fd: int) -> bool:
    """Take a shared lock on the whole file without waiting; False if a writer holds it."""
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_RDLCK))
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


class LockWaiter:
    """Calls back on the event loop once a busy file's write lock is released."""

    def __init__(self) -> None:
        self._waiting: dict[str, list[Callable[[], None]]] = {}
        self._lock = threading.Lock()

    def wait(self, path: str, callback: Callable[[], None]) -> bool:
        """Call `callback` once `path` is unlocked; False if too many waits are under way
        (then the caller retries on a timer). Must be called on the event loop."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if path in self._waiting:
                self._waiting[path].append(callback)
                return True
            if len(self._waiting) >= MAX_WAITERS:
                return False
            self._waiting[path] = [callback]
        threading.Thread(target=self._wait, args=(path, loop), daemon=True,
                         name="lock-wait").start()
        return True

    def _wait(self, path: str, loop: asyncio.AbstractEventLoop) -> None:
        try:
            # O_NONBLOCK: a file swapped for a fifo since it was found busy must not block
            # this thread in open() for ever (the lock wait itself is what may block).
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
            try:
                fcntl.fcntl(fd, fcntl.F_OFD_SETLKW, _flock(fcntl.F_RDLCK))
            finally:
                os.close(fd)
        except OSError:
            pass  # gone or unlockable: the retry will find out
        finally:
            with self._lock:
                callbacks = self._waiting.pop(path, [])
            for callback in callbacks:
                loop.call_soon_threadsafe(callback)
