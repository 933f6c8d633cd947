"""Small filesystem steps of the replica, each refusing symlinks and keeping metadata.

Files are replaced by writing a staging file in the replica's own filesystem and renaming it over
the old one, so a reader (or a promote) never sees half a file; appends to an untouched file are
written in place after checking that the file still has the size the batch was verified against.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from pathlib import Path

from replicator.delta.ops import Meta
from replicator.errors import ApplyError

PathLike = str | Path


def read_bytes(path: PathLike) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        return f.read()


def kind_of(path: PathLike) -> str:
    """'file', 'dir', 'missing' or 'other' (symlinks and specials count as other)."""
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):  # the latter: a file where a dir belongs
        return "missing"
    if stat.S_ISREG(mode):
        return "file"
    return "dir" if stat.S_ISDIR(mode) else "other"


def apply_meta(fd: int, meta: Meta, *, may_chown: bool) -> None:
    os.fchmod(fd, meta.mode)
    if may_chown:
        os.fchown(fd, meta.uid, meta.gid)
    if meta.mtime_ns:
        os.utime(fd, ns=(meta.mtime_ns, meta.mtime_ns))


def make_dirs(base: str, path: str) -> list[str]:
    """Create directory `path` and its missing parents below `base`, removing whatever
    non-directory stands in the way (the replica is written by us alone, so such a thing is
    stale: the origin replaced a file by a directory, or a write was cut short). Returns what
    was removed, so cached digests of it can be forgotten."""
    if path != base and not path.startswith(f"{base}/"):
        raise ApplyError(f"{path}: not under the replica directory {base}")
    removed: list[str] = []
    os.makedirs(base, exist_ok=True)
    current = base
    for part in path[len(base) + 1:].split("/") if path != base else []:
        current = f"{current}/{part}"
        kind = kind_of(current)
        if kind == "dir":
            continue
        if kind != "missing":
            remove(current)
            removed.append(current)
        os.mkdir(current)
    return removed


def ensure_dir(base: str, path: str, meta: Meta | None, *, may_chown: bool) -> list[str]:
    """Make `path` a directory (see `make_dirs`) with the origin's mode and owner."""
    removed = [] if kind_of(path) == "dir" else make_dirs(base, path)
    if meta is not None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            apply_meta(fd, Meta(meta.mode, meta.uid, meta.gid, 0), may_chown=may_chown)
        finally:
            os.close(fd)
    return removed


def write_staging(staging: PathLike, content: bytes, meta: Meta | None, *,
                  may_chown: bool) -> None:
    """Write `content` (with the origin's metadata) to `staging`, invisible to readers. This is
    where a full filesystem shows: a failure here has changed nothing a reader can see."""
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        _write_all(fd, content, 0)
        if meta is not None:
            apply_meta(fd, meta, may_chown=may_chown)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(staging)
        raise
    os.close(fd)


def install_file(base: str, path: str, staged: PathLike) -> list[str]:
    """Atomically rename `staged` over `path`; what stood in the way (a directory at `path`, a
    file where a parent directory belongs) is removed and returned."""
    removed: list[str] = []
    if kind_of(path) == "dir":
        shutil.rmtree(path)
        removed.append(path)
    try:
        os.rename(staged, path)
    except (FileNotFoundError, NotADirectoryError):  # a new directory, or a file in the way
        removed += make_dirs(base, os.path.dirname(path))
        os.rename(staged, path)
    return removed


def append_file(path: PathLike, expected_size: int, tails: list[bytes], meta: Meta | None,
                *, may_chown: bool) -> None:
    """Append `tails` at `expected_size` in place; ApplyError if the file is not that size. A
    write that fails part way (a full filesystem) is cut back to the old size: the file is
    then as it was, never torn."""
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        if size != expected_size:
            raise ApplyError(f"{path}: has {size} bytes, the batch was checked against "
                             f"{expected_size}")
        try:
            offset = size
            for tail in tails:
                _write_all(fd, tail, offset)
                offset += len(tail)
        except OSError:
            os.ftruncate(fd, size)  # shrinking needs no room
            raise
        if meta is not None:
            apply_meta(fd, meta, may_chown=may_chown)
    finally:
        os.close(fd)


def remove(path: PathLike) -> None:
    kind = kind_of(path)
    if kind == "dir":
        shutil.rmtree(path)
    elif kind != "missing":
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        if written == 0:
            raise OSError(errno.ENOSPC, "short write")
        view, offset = view[written:], offset + written
