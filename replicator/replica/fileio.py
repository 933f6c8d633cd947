"""Small filesystem steps of the replica, each relative to a directory descriptor, refusing
symlinks and keeping metadata.

Every step names one entry of a directory the caller opened without following symlinks
(replica.beneath), so nothing here can be redirected out of the replica. New contents are
written to a staging file in the replica's own filesystem and renamed over the old one, so a
reader (or a promote) never sees half a file. Appends to an untouched file, and files changed
in a few places (a cache Dovecot updates in place), are written in place after checking that
the file still has the size the batch was verified against, and undone if they fail part
way; a receiver killed in the middle of one leaves that file in neither state, and puts it
back into the old one when it restarts (replica.undo).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

from replicator.delta.apply import Patch
from replicator.delta.ops import Meta
from replicator.errors import ApplyError
from replicator.replica.crashpoints import crash_point

PathLike = str | Path


def read_at(dir_fd: int, name: str) -> bytes:
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    with os.fdopen(fd, "rb") as f:
        return f.read()


def read_range_at(dir_fd: int, name: str, offset: int, length: int) -> bytes:
    """`length` bytes of the file from `offset` (fewer at its end)."""
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        parts, got = [], 0
        while got < length and (part := os.pread(fd, length - got, offset + got)):
            parts.append(part)
            got += len(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)
    finally:
        os.close(fd)


def read_for_update_at(dir_fd: int, name: str) -> bytearray:
    """The file's content, read straight into the buffer a batch then patches in place (a
    cache of megabytes is rewritten on every commit: one copy fewer than read, then copy)."""
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    with os.fdopen(fd, "rb", buffering=0) as f:
        content = bytearray(os.fstat(fd).st_size)
        view, filled = memoryview(content), 0
        while filled < len(content) and (got := f.readinto(view[filled:])):
            filled += got
        view.release()
        del content[filled:]
        content += f.read()  # grown meanwhile (only this daemon writes here: never, really)
    return content


def kind_at(dir_fd: int, name: str) -> str:
    """'file', 'dir', 'missing' or 'other' (symlinks and specials count as other)."""
    try:
        mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return "missing"
    if stat.S_ISREG(mode):
        return "file"
    return "dir" if stat.S_ISDIR(mode) else "other"


def apply_meta(fd: int, meta: Meta, *, may_chown: bool,
               now: os.stat_result | None = None) -> None:
    """Give the open file `meta`; `now`, its stat if the caller has it, spares the mode and
    owner calls that would change nothing (a log appended to on every commit keeps them)."""
    if now is None or stat.S_IMODE(now.st_mode) != meta.mode:
        os.fchmod(fd, meta.mode)
    if may_chown and (now is None or (now.st_uid, now.st_gid) != (meta.uid, meta.gid)):
        os.fchown(fd, meta.uid, meta.gid)
    if meta.mtime_ns:
        os.utime(fd, ns=(meta.mtime_ns, meta.mtime_ns))


def write_staging(staging: PathLike, content: bytes | bytearray | memoryview,
                  meta: Meta | None, *,
                  may_chown: bool) -> None:
    """Write `content` (with the origin's metadata) to `staging` (in the daemon's own
    replica_dir/.staging), invisible to readers. This is where a full filesystem shows: a
    failure here has changed nothing a reader can see."""
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


def install_at(staged: PathLike, dir_fd: int, name: str) -> bool:
    """Atomically rename `staged` over `name` in `dir_fd`; True if a directory stood there
    (it is removed first, without following symlinks)."""
    was_dir = kind_at(dir_fd, name) == "dir"
    if was_dir:
        shutil.rmtree(name, dir_fd=dir_fd)
    os.rename(staged, name, dst_dir_fd=dir_fd)
    return was_dir


def append_at(dir_fd: int, name: str, expected_size: int, tails: list[bytes],
              meta: Meta | None, *, may_chown: bool) -> None:
    """Append `tails` at `expected_size` in place; ApplyError if the file is not that size. A
    write that fails part way (a full filesystem) is cut back to the old size: the file is
    then as it was, never torn."""
    fd = os.open(name, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        before = os.fstat(fd)
        size = before.st_size
        if size != expected_size:
            raise ApplyError(f"{name}: has {size} bytes, the batch was checked against "
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
            apply_meta(fd, meta, may_chown=may_chown, now=before)  # writes keep mode, owner
    finally:
        os.close(fd)


def patch_at(dir_fd: int, name: str, extent: Callable[[int, int], bytes | memoryview],
             size: int, patch: Patch, meta: Meta | None, *, may_chown: bool) -> bool:
    """Write the patch's extents of the new content (`extent(start, end)`; `size` bytes in
    all, checked) into the file in place: a cache of megabytes changed in a few places
    costs those places, not a new
    file. False, having written nothing, if the file is not a regular file of its own (a
    hard link: a write would change the other name too), the caller then installs the
    content whole; ApplyError if it does not have the size the batch was checked against. A
    write that fails part way (a full filesystem) is undone: the covered bytes are written
    back and the file cut back to its old size, so it is as it was, never torn."""
    fd = os.open(name, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode) or before.st_nlink != 1:
            return False
        if before.st_size != patch.old_size:
            raise ApplyError(f"{name}: has {before.st_size} bytes, the batch was checked "
                             f"against {patch.old_size}")
        try:
            for number, (start, end) in enumerate(patch.extents):
                if number == 1:
                    crash_point("mid-patch", [name])
                _write_all(fd, extent(start, end), start)
            if size < before.st_size:  # never, while patches only grow files
                os.ftruncate(fd, size)
        except OSError:
            for offset, data in reversed(patch.before):  # overwriting needs no room
                _write_all(fd, data, offset)
            os.ftruncate(fd, patch.old_size)
            raise
        if meta is not None:
            apply_meta(fd, meta, may_chown=may_chown, now=before)
        return True
    finally:
        os.close(fd)


def overwrite_at(dir_fd: int, name: str, content: bytes) -> None:
    """Make the regular file `name` hold `content`, no longer than it is, in place: rewriting
    pages it has and cutting it needs no room, even on a full filesystem."""
    fd = os.open(name, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        _write_all(fd, content, 0)
        os.ftruncate(fd, len(content))
    finally:
        os.close(fd)


def remove_at(dir_fd: int, name: str) -> None:
    """Remove `name` (a whole tree if it is a directory; a symlink itself, never its
    target)."""
    kind = kind_at(dir_fd, name)
    if kind == "dir":
        shutil.rmtree(name, dir_fd=dir_fd)  # fd-based traversal: symlink-safe on Linux
    elif kind != "missing":
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dir_fd)


def _write_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        if written == 0:
            raise OSError(errno.ENOSPC, "short write")
        view, offset = view[written:], offset + written
