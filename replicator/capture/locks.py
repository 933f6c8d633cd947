"""fcntl locks the way Dovecot's writers expect readers to take them.

Dovecot appends to its logs and rewrites its caches under a whole-file exclusive fcntl lock
(lock_method = fcntl), held through the write and, with mail_fsync = always, the fdatasync.
We read under a shared lock so we never see half a record (a log only until Dovecot has held
its lock for a moment: dovecot.filekinds.READ_PAST_LOCK). Our locks are open-file-description
(OFD) locks: they conflict with Dovecot's classic ones, but unlike classic locks, closing one
descriptor of ours never drops another lock we hold on the same file.

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
import time
from collections.abc import Callable

_FLOCK = struct.Struct("@hhqqi4x")  # struct flock on Linux x86_64/aarch64
MAX_WAITERS = 16
POLL_INTERVAL = 0.00001  # a patient wait (LockWaiter.wait) tries the lock this often


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


def _poll_lock(fd: int, deadline: float) -> None:
    """Return once a shared lock on `fd` is had (then held until the caller closes it) or
    `deadline` (time.monotonic) has passed: a blocking wait cannot be given a timeout."""
    while not try_read_lock(fd):
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, POLL_INTERVAL))


class LockWaiter:
    """Calls back on the event loop once a busy file's write lock is released (or, with a
    patience, once it has been held that long)."""

    def __init__(self) -> None:
        self._waiting: dict[str, list[Callable[[], None]]] = {}
        self._lock = threading.Lock()

    def wait(self, path: str, callback: Callable[[], None],
             patience: float | None = None) -> bool:
        """Call `callback` once `path` is unlocked, or `patience` seconds from now if that
        comes first; False if too many waits are under way (then the caller retries on a
        timer). Must be called on the event loop. The patience is timed in this thread, not
        by the loop: asyncio's timers wake with millisecond granularity (epoll)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if path in self._waiting:
                self._waiting[path].append(callback)
                return True
            if len(self._waiting) >= MAX_WAITERS:
                return False
            self._waiting[path] = [callback]
        threading.Thread(target=self._wait, args=(path, loop, patience), daemon=True,
                         name="lock-wait").start()
        return True

    def _wait(self, path: str, loop: asyncio.AbstractEventLoop,
              patience: float | None) -> None:
        try:
            # O_NONBLOCK: a file swapped for a fifo since it was found busy must not block
            # this thread in open() for ever (the lock wait itself is what may block).
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
            try:
                if patience is None:
                    fcntl.fcntl(fd, fcntl.F_OFD_SETLKW, _flock(fcntl.F_RDLCK))
                else:
                    _poll_lock(fd, time.monotonic() + patience)
            finally:
                os.close(fd)
        except OSError:
            pass  # gone or unlockable: the retry will find out
        finally:
            with self._lock:
                callbacks = self._waiting.pop(path, [])
            for callback in callbacks:
                loop.call_soon_threadsafe(callback)
