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
    except FileNotFoundError:
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


def ensure_dir(path: PathLike, meta: Meta | None, *, may_chown: bool) -> None:
    if kind_of(path) == "other":
        remove(path)
    os.makedirs(path, exist_ok=True)
    if meta is not None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            apply_meta(fd, Meta(meta.mode, meta.uid, meta.gid, 0), may_chown=may_chown)
        finally:
            os.close(fd)


def replace_file(path: PathLike, content: bytes, meta: Meta | None, staging: PathLike,
                 *, may_chown: bool) -> None:
    """Atomically make `path` hold `content` (written to `staging` first)."""
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        _write_all(fd, content, 0)
        if meta is not None:
            apply_meta(fd, meta, may_chown=may_chown)
    finally:
        os.close(fd)
    if kind_of(path) == "dir":
        shutil.rmtree(path)
    try:
        os.rename(staging, path)
    except FileNotFoundError:  # a new directory: create it (and its parents) once
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.rename(staging, path)


def append_file(path: PathLike, expected_size: int, tails: list[bytes], meta: Meta | None,
                *, may_chown: bool) -> None:
    """Append `tails` at `expected_size` in place; ApplyError if the file is not that size."""
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        if size != expected_size:
            raise ApplyError(f"{path}: has {size} bytes, the batch was checked against "
                             f"{expected_size}")
        offset = size
        for tail in tails:
            _write_all(fd, tail, offset)
            offset += len(tail)
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
