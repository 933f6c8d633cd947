"""A real, small tmpfs for tests of a full filesystem (ENOSPC as the kernel gives it)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str, mode: str = "0755") -> Iterator[Path]:
    """Mount a tmpfs of `size` (mount's syntax: "300k") at `where` (created) for the block;
    root only. Unmounted lazily afterwards, so a daemon still inside cannot keep it busy."""
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode={mode}", "tmpfs",
                    str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(mount: Path, name: str = "filler") -> Path:
    """Write zeros into `mount/name` until the filesystem is full; the file to unlink to make
    room again."""
    path = mount / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            while os.write(fd, bytes(4096)):
                pass
    finally:
        os.close(fd)
    return path
