"""Copying one user's directory tree from the RAM replica to the staging area, with plain
syscalls on string paths.

The copy keeps what `tar -p --same-owner` kept (owner, mode, mtimes; symlinks as symlinks) and
writes the files the UID gap changes from the bytes it was given instead of the originals, so
the gap costs no second write. Creating tens of thousands of inodes is kernel work, which lets
several users be copied at once by helper processes (promote.helpers says why not threads); per
file it is open, fstat, read, close, create, chown, write, utime and close. The bytes pass
through this process (sendfile would not) because promote checks them against the digest
journal on the way: one read per file serves both.
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


def read_file(path: str) -> tuple[bytes, os.stat_result] | None:
    """The file's bytes (as many as its stat said) and its stat, None if there is no such
    file. One open, fstat and read: verifying and copying the file both use these bytes."""
    try:
        fd = os.open(path, _READ)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        st = os.fstat(fd)
        chunks, size = [], st.st_size
        while size > 0 and (chunk := os.read(fd, size)):
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks), st
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

    def file(self, dst: str, st: os.stat_result, data: bytes, *, own: bool) -> None:
        """Create `dst` holding `data`, with the owner and mode of the source (`st`); `own`:
        these are the source's own bytes, so its times are kept too, else the file is new
        (its mtime is now, as when the gap is written into a file in place)."""
        out = self._create(dst, st)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(out, view):]
            if own:
                os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
        finally:
            os.close(out)

    def symlink(self, src: str, dst: str) -> None:
        st = os.lstat(src)
        os.symlink(os.readlink(src), dst)
        os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)

    def finish(self) -> None:
        for path, atime, mtime in self._dir_times:
            os.utime(path, ns=(atime, mtime))
        self._dir_times.clear()

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
