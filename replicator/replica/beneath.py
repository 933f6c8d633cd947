"""Paths of a replica reached only through directory file descriptors, never through a symlink.

The replica keeps the origin's ownership, so a mail user owns its directories here too and
could swap one for a symlink at any moment. A path checked once and then used by name would
follow that symlink out of `replica_dir` (the check and the use are two lookups). Here every
component is opened with `openat(O_NOFOLLOW | O_DIRECTORY)` from the descriptor of its parent,
and every operation (read, write, rename, unlink, mkdir, rmtree) names only the last
component relative to its parent's descriptor: a symlink anywhere on the way is never
followed. A symlink or file where a directory belongs counts as missing when reading, and is
removed (the link itself, never its target) and replaced by a directory when writing.

Descriptors are cached for one batch and closed after it; what the batch removes is
forgotten at once. `replica_dir/<origin>` is kept 0700 owned by the daemon, so no other user
can reach the tree at all (`make_private`).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path

from replicator.errors import ApplyError
from replicator.replica import fileio

log = logging.getLogger(__name__)
OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
NOT_A_DIRECTORY = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)


class Beneath:
    """Directory descriptors below `top` (replica_dir/<origin>/<root>), by relative path."""

    def __init__(self, top: str) -> None:
        self.top = top
        self._fds: dict[str, int] = {}
        self._removed: list[str] = []

    def dir(self, rel: str, *, create: bool = False) -> int | None:
        """The descriptor of directory `rel` ('' = top); None if it is not a directory
        (missing, a file, a symlink) unless `create`, which makes it one."""
        fd = self._fds.get(rel)
        if fd is not None:
            return fd
        if rel == "":
            fd = self._open_top(create)
        else:
            parent_rel, _, name = rel.rpartition("/")
            if name in ("", ".", ".."):
                raise ApplyError(f"{self.top}/{rel}: not a normalized path")
            parent = self.dir(parent_rel, create=create)
            fd = None if parent is None else self._open_child(parent, name, rel, create)
        if fd is not None:
            self._fds[rel] = fd
        return fd

    def parent(self, rel: str, *, create: bool = False) -> tuple[int, str] | None:
        """(descriptor of `rel`'s directory, `rel`'s last name), or None (see `dir`)."""
        parent_rel, _, name = rel.rpartition("/")
        fd = self.dir(parent_rel, create=create)
        return None if fd is None else (fd, name)

    def kind(self, rel: str) -> str:
        """'file', 'dir', 'missing' or 'other' for `rel`, without following symlinks."""
        place = self.parent(rel)
        return "missing" if place is None else fileio.kind_at(*place)

    def read(self, rel: str) -> bytes:
        place = self.parent(rel)
        if place is None:
            raise FileNotFoundError(errno.ENOENT, "no such file", f"{self.top}/{rel}")
        return fileio.read_at(*place)

    def read_range(self, rel: str, offset: int, length: int) -> bytes:
        """`length` bytes of the file `rel` from `offset` (fewer at its end)."""
        place = self.parent(rel)
        if place is None:
            raise FileNotFoundError(errno.ENOENT, "no such file", f"{self.top}/{rel}")
        return fileio.read_range_at(*place, offset, length)

    def read_for_update(self, rel: str) -> bytearray:
        """`read`, into a buffer the caller may change (fileio.read_for_update_at)."""
        place = self.parent(rel)
        if place is None:
            raise FileNotFoundError(errno.ENOENT, "no such file", f"{self.top}/{rel}")
        return fileio.read_for_update_at(*place)

    def take_removed(self) -> list[str]:
        """What `dir(create=True)` removed to make way for directories since last asked."""
        removed, self._removed = self._removed, []
        return removed

    def forget(self, rel: str) -> None:
        """Close the descriptors of `rel` and below (the batch removed or replaced it)."""
        prefix = f"{rel}/"
        for key in [k for k in self._fds if k == rel or k.startswith(prefix) or not rel]:
            os.close(self._fds.pop(key))

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def _open_top(self, create: bool) -> int | None:
        try:
            return os.open(self.top, OPEN_DIR)
        except OSError as exc:
            if exc.errno not in NOT_A_DIRECTORY or not create:
                if exc.errno in NOT_A_DIRECTORY:
                    return None
                raise
        parent, _, name = self.top.rpartition("/")
        os.makedirs(parent, exist_ok=True)  # replica_dir/<origin>: the daemon's own, 0700
        return self._open_child(os.open(parent, OPEN_DIR), name, "", True, close_parent=True)

    def _open_child(self, parent: int, name: str, rel: str, create: bool, *,
                    close_parent: bool = False) -> int | None:
        try:
            try:
                return os.open(name, OPEN_DIR, dir_fd=parent)
            except OSError as exc:
                if exc.errno not in NOT_A_DIRECTORY:
                    raise
                if not create:
                    return None
            if fileio.kind_at(parent, name) != "missing":  # a file or symlink in the way
                fileio.remove_at(parent, name)
                self._removed.append(rel)
            os.mkdir(name, dir_fd=parent)
            return os.open(name, OPEN_DIR, dir_fd=parent)
        finally:
            if close_parent:
                os.close(parent)


def read_file_under(top: Path | str, rel: str) -> bytes | None:
    """The regular file `rel` below `top`, reached without following any symlink; None when
    there is no regular file there."""
    tree = Beneath(os.fspath(top))
    try:
        return tree.read(rel) if tree.kind(rel) == "file" else None
    except FileNotFoundError:
        return None
    finally:
        tree.close()


def write_back_under(top: Path | str, rel: str, content: bytes) -> None:
    """fileio.overwrite_at for the regular file `rel` below `top`, reached without following
    any symlink."""
    tree = Beneath(os.fspath(top))
    try:
        place = tree.parent(rel)
        if place is None:
            raise FileNotFoundError(errno.ENOENT, "no such file", f"{top}/{rel}")
        fileio.overwrite_at(*place, content)
    finally:
        tree.close()


def make_private(path: Path, mode: int) -> None:
    """Create `path` if needed and make it the daemon's own: owned by its uid, no more than
    `mode` (0700 for replica_dir/<origin>: it holds peers' users' mail indexes, and the mail
    users own directories inside, which they must not be able to reach). A wrong owner or
    mode is fixed and logged."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir(mode=mode)
    except FileExistsError:
        pass
    else:
        os.chmod(path, mode)  # mkdir's mode is masked by the umask: exactly `mode` now
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        current = stat.S_IMODE(st.st_mode)
        if st.st_uid == os.geteuid() and current & ~mode == 0:
            return
        if st.st_uid != os.geteuid():
            os.fchown(fd, os.geteuid(), os.getegid())
        os.fchmod(fd, current & mode)
        log.warning("%s was mode %04o owned by uid %d: made it %04o owned by uid %d (only the "
                    "daemon may enter it)", path, current, st.st_uid, current & mode,
                    os.geteuid())
    finally:
        os.close(fd)
