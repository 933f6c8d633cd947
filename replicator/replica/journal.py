"""What every file of a replica should hold, as its origin announced it.

The receiver records, after each applied batch, the size and xxh3-128 of every file it changed
(and the paths it removed). The journal lives beside the replica (`.digests`, JSON lines,
appended; rewritten compactly when it has grown to twice what it describes), so that a replica
can be verified, and a promote can refuse a damaged copy, when the origin is gone. A mismatch
found later means the copy changed after it was verified: a scrub reports it and the origin
resends that directory.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

Expected = tuple[int, str]  # size, xxh3-128 hex


class DigestJournal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.files: dict[str, Expected] = {}
        self._below: dict[str, int] = {}  # directory -> how many files it holds, at any depth
        self.exists = path.exists()
        self._pending: list[str] = []
        self._lines = 0
        if self.exists:
            self._load()

    def _load(self) -> None:
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                self._lines += 1
                try:
                    record = json.loads(line)
                except ValueError:
                    break  # a torn last line (crash mid-append): what follows is unknown
                self._apply(record)

    def _apply(self, record: list[object]) -> None:
        rel = str(record[1])
        if record[0] == "+":
            if rel in self._below:  # a file where a directory was: nothing is below it now
                self._drop(rel)
            if rel not in self.files:
                self._count(rel, 1)
            self.files[rel] = (int(str(record[2])), str(record[3]))
        else:
            self._drop(rel)

    def _drop(self, rel: str) -> None:
        """Forget `rel` and everything below it (a scan of all files only if it is a directory
        holding some: the common case, one file, costs one lookup)."""
        if self.files.pop(rel, None) is not None:
            self._count(rel, -1)
        if rel in self._below:
            prefix = rel + "/"
            for key in [k for k in self.files if k.startswith(prefix)]:
                del self.files[key]
                self._count(key, -1)

    def _count(self, rel: str, delta: int) -> None:
        parent = rel.rpartition("/")[0]
        while parent:
            left = self._below.get(parent, 0) + delta
            if left:
                self._below[parent] = left
            else:
                del self._below[parent]
            parent = parent.rpartition("/")[0]

    def set(self, rel: str, size: int, digest: bytes) -> None:
        record = ["+", rel, size, digest.hex()]
        self._apply(record)
        self._pending.append(json.dumps(record))

    def remove(self, rel: str) -> None:
        """Forget `rel` and, if it was a directory, everything below it."""
        self._drop(rel)
        self._pending.append(json.dumps(["-", rel]))

    def flush(self) -> None:
        if not self._pending:
            if not self.exists:  # a replica with no files yet is verifiable (and empty)
                self.path.touch()
                self.exists = True
            return
        if self._lines + len(self._pending) > 2 * len(self.files) + 1000:
            self._rewrite()
        else:
            self._append(("\n".join(self._pending) + "\n").encode())
            self._lines += len(self._pending)
        self._pending = []
        self.exists = True

    def _append(self, data: bytes) -> None:
        """One write at the end; one that fails part way (a full filesystem) is cut back, so
        the file never ends in a torn record that a later append would bury."""
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            size = os.fstat(fd).st_size
            try:
                written = os.write(fd, data)
                if written != len(data):
                    raise OSError(errno.ENOSPC, f"short write to {self.path}")
            except OSError:
                os.ftruncate(fd, size)
                raise
        finally:
            os.close(fd)

    def _rewrite(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for rel, (size, digest) in self.files.items():
                f.write(json.dumps(["+", rel, size, digest]) + "\n")
        os.replace(tmp, self.path)
        self._lines = len(self.files)
