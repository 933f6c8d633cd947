"""The sender's manifest: for every shipped file, how it looked on disk and what replicas hold.

`StatKey` (size, mtime, ctime, inode) tells a rescan whether a file may have changed without
reading it; `Shipped` (size, digest, block hashes, metadata) is what the next delta is encoded
against. A file whose mtime was within `RACY_NS` of the moment it was read is *racy*: a write
in the same timestamp tick would leave its stat unchanged, so the next rescan reads it again
(the git "racy clean" rule).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from replicator.delta.encode import Shipped
from replicator.delta.ops import Meta
from replicator.paths import join_rel

RACY_NS = 50_000_000


@dataclass(frozen=True)
class StatKey:
    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int


@dataclass
class FileEntry:
    stat: StatKey
    shipped: Shipped
    racy: bool = False


@dataclass
class DirEntry:
    meta: Meta
    ino: int
    files: dict[str, FileEntry] = field(default_factory=dict)
    subdirs: set[str] = field(default_factory=set)


class Manifest:
    """Per root, per relative directory: what was last shipped. Also an inode index, so a file
    that appears under a new name (a rotated log, a `.backup` hard link, a renamed mailbox) is
    recognised as a copy of one the replicas already have."""

    def __init__(self) -> None:
        self._dirs: dict[str, dict[str, DirEntry]] = {}
        self._inodes: dict[tuple[str, int], str] = {}

    def dir(self, root: str, reldir: str) -> DirEntry | None:
        return self._dirs.get(root, {}).get(reldir)

    def file(self, root: str, relpath: str) -> FileEntry | None:
        reldir, _, name = relpath.rpartition("/")
        entry = self.dir(root, reldir)
        return entry.files.get(name) if entry else None

    def path_of_inode(self, root: str, ino: int) -> str | None:
        return self._inodes.get((root, ino))

    def set_dir(self, root: str, reldir: str, meta: Meta, ino: int) -> DirEntry:
        dirs = self._dirs.setdefault(root, {})
        entry = dirs.get(reldir)
        if entry is None:
            entry = dirs[reldir] = DirEntry(meta, ino)
            if reldir:
                parent, _, name = reldir.rpartition("/")
                parent_entry = dirs.get(parent)
                if parent_entry is not None:
                    parent_entry.subdirs.add(name)
        else:
            entry.meta, entry.ino = meta, ino
        return entry

    def set_file(self, root: str, reldir: str, name: str, entry: FileEntry) -> None:
        directory = self._dirs[root][reldir]
        old = directory.files.get(name)
        path = join_rel(reldir, name)
        if old is not None and self._inodes.get((root, old.stat.ino)) == path:
            del self._inodes[(root, old.stat.ino)]
        directory.files[name] = entry
        self._inodes[(root, entry.stat.ino)] = path

    def remove_file(self, root: str, reldir: str, name: str) -> None:
        directory = self._dirs[root][reldir]
        old = directory.files.pop(name, None)
        if old is not None and self._inodes.get((root, old.stat.ino)) == join_rel(reldir, name):
            del self._inodes[(root, old.stat.ino)]

    def remove_tree(self, root: str, reldir: str) -> None:
        """Forget `reldir` and everything below it."""
        dirs = self._dirs.get(root, {})
        entry = dirs.pop(reldir, None)
        if entry is not None:
            for name in entry.subdirs:
                self.remove_tree(root, join_rel(reldir, name))
            for name, file_entry in entry.files.items():
                self._forget_inode(root, join_rel(reldir, name), file_entry)
        if reldir:
            parent, _, name = reldir.rpartition("/")
            if parent in dirs:
                dirs[parent].subdirs.discard(name)

    def _forget_inode(self, root: str, path: str, entry: FileEntry) -> None:
        if self._inodes.get((root, entry.stat.ino)) == path:
            del self._inodes[(root, entry.stat.ino)]

    def dirs(self, root: str) -> Iterator[tuple[str, DirEntry]]:
        yield from list(self._dirs.get(root, {}).items())

    def roots(self) -> list[str]:
        return list(self._dirs)

    def file_count(self) -> int:
        return sum(len(d.files) for dirs in self._dirs.values() for d in dirs.values())
