"""Copying one user's directory tree from the RAM replica to the staging area, with plain
syscalls on string paths.

The copy keeps what `tar -p --same-owner` kept (owner, mode, mtimes; symlinks as symlinks) and
writes the files the UID gap changes from the bytes it was given instead of the originals, so
the gap costs no second write. Creating tens of thousands of inodes is kernel work, which lets
several users be copied at once by helper processes (promote.helpers says why not threads); per
file it is open, fstat, create, chown, sendfile, utime and two closes, where the tar pipe also
moved every byte twice through a pipe and parsed a tar stream.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field

from replicator.errors import ReplicatorError

_READ = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW


@dataclass
class Listing:
    """One directory tree: relative directory ("" for the top) -> regular file names, and
    -> symlink names."""

    files: dict[str, list[str]] = field(default_factory=dict)
    links: dict[str, list[str]] = field(default_factory=dict)


def list_tree(top: str) -> Listing:
    """Everything below `top` (one scandir per directory, no stat per file). Anything that is
    neither a directory, a regular file nor a symlink is refused: a Dovecot root holds none,
    and a copy that silently left it out would not be the replica."""
    listing = Listing()
    stack = [""]
    while stack:
        rel = stack.pop()
        files: list[str] = []
        links: list[str] = []
        with os.scandir(f"{top}/{rel}" if rel else top) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(f"{rel}/{entry.name}" if rel else entry.name)
                elif entry.is_file(follow_symlinks=False):
                    files.append(entry.name)
                elif entry.is_symlink():
                    links.append(entry.name)
                else:
                    raise ReplicatorError(f"{entry.path} is neither a file, a directory nor a "
                                          "symlink: promote does not copy it")
        listing.files[rel] = files
        if links:
            listing.links[rel] = links
    return listing


def read_bytes(path: str, limit: int | None = None) -> bytes | None:
    """The file's bytes (at most `limit`), None if there is no such file."""
    try:
        fd = os.open(path, _READ)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        size = limit if limit is not None else os.fstat(fd).st_size
        chunks = []
        while size > 0 and (chunk := os.read(fd, size)):
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


class Copier:
    """Copies directories, files and symlinks with their owner, mode and times. Directory times
    are set by finish(), after everything inside was created (creating an entry changes its
    directory's mtime)."""

    def __init__(self, umask: int) -> None:
        self._umask = umask
        self._dir_times: list[tuple[str, int, int]] = []

    def directory(self, src: str, dst: str) -> None:
        st = os.lstat(src)
        mode = stat.S_IMODE(st.st_mode)
        os.mkdir(dst, mode)
        if mode & self._umask:
            os.chmod(dst, mode)
        os.chown(dst, st.st_uid, st.st_gid)
        self._dir_times.append((dst, st.st_atime_ns, st.st_mtime_ns))

    def file(self, src: str, dst: str, data: bytes | None) -> None:
        """Copy `src`, or write `data` in its place (then the file is new: its mtime is now,
        as when the gap is written into a file in place)."""
        if data is not None:
            self._write(dst, os.stat(src, follow_symlinks=False), data)
            return
        fd = os.open(src, _READ)
        try:
            st = os.fstat(fd)
            out = self._create(dst, st)
            try:
                _send(fd, out, st.st_size, dst)
                os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
            finally:
                os.close(out)
        finally:
            os.close(fd)

    def symlink(self, src: str, dst: str) -> None:
        st = os.lstat(src)
        os.symlink(os.readlink(src), dst)
        os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)

    def finish(self) -> None:
        for path, atime, mtime in self._dir_times:
            os.utime(path, ns=(atime, mtime))
        self._dir_times.clear()

    def _write(self, dst: str, st: os.stat_result, data: bytes) -> None:
        out = self._create(dst, st)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(out, view):]
        finally:
            os.close(out)

    def _create(self, dst: str, st: os.stat_result) -> int:
        mode = stat.S_IMODE(st.st_mode)
        out = os.open(dst, _CREATE, mode)
        try:
            if mode & self._umask:
                os.fchmod(out, mode)
            os.fchown(out, st.st_uid, st.st_gid)
        except BaseException:
            os.close(out)
            raise
        return out


def _send(src: int, dst: int, size: int, name: str) -> None:
    """Copy `size` bytes in the kernel (tmpfs to another filesystem: copy_file_range refuses
    to cross filesystems here, sendfile does not)."""
    done = 0
    while done < size:
        sent = os.sendfile(dst, src, done, size - done)
        if sent == 0:
            raise ReplicatorError(f"{name}: the replica's file shrank while it was copied")
        done += sent
