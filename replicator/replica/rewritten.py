"""A small file beside a replica, rewritten from its first byte through a descriptor kept open.

The receiver rewrites two such files on its latency path: its position (`.applied.json`, once
per chunk of input) and the before-images of in-place writes (`.undo`, once per batch that
patches a file). One pwrite each time, no open, close or rename: those cost more than the
write. Nothing is truncated either, so a shorter content leaves the end of a longer one behind:
each caller pads its content or says how long it is. A file removed under it (a replica wiped
by hand) is created again at the next write, not written into an unlinked inode.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path


class KeptDescriptor:
    """A file descriptor kept open between writes (`_fd`, opened by the subclass when it
    first writes), closed by `close` or when the object goes away. The digest journal keeps
    its appends' descriptor this way too."""

    _fd: int | None = None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.close()


class RewrittenFile(KeptDescriptor):
    def __init__(self, path: Path, mode: int) -> None:
        self.path, self._mode = path, mode
        self.size = 0  # the file's size as last opened or written

    def open(self) -> None:
        """Open the file (created if missing) unless it is open and still has a name."""
        if self._fd is not None:
            if os.fstat(self._fd).st_nlink:
                return
            self.close()
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                           self._mode)
        self.size = os.fstat(self._fd).st_size

    def rewrite(self, data: bytes) -> None:
        """Write `data` over the start of the file, in one pwrite (ENOSPC if it fell short)."""
        self.open()
        self.write_opened(data)

    def write_opened(self, data: bytes) -> None:
        """`rewrite`, for a caller that has just called `open` (to look at `size` first)."""
        assert self._fd is not None
        if os.pwrite(self._fd, data, 0) != len(data):
            raise OSError(errno.ENOSPC, f"short write to {self.path}")
        self.size = max(self.size, len(data))
