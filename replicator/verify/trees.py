"""Offline comparison of an origin's root with a replica of it, file by file.

Transient files (locks, temp files) are ignored on both sides: they are never shipped. Every
difference is named (path, what differs, expected, found) so an operator can act on it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from replicator.dovecot.filekinds import is_transient
from replicator.errors import ReplicatorError
from replicator.hashing import digest


@dataclass(frozen=True)
class Difference:
    path: str
    field: str
    expected: str
    found: str


@dataclass
class TreeReport:
    files: int = 0
    bytes_read: int = 0
    differences: list[Difference] = field(default_factory=list)

    @property
    def consistent(self) -> bool:
        return not self.differences


@dataclass(frozen=True)
class _Item:
    kind: str
    path: Path


def _walk(top: Path) -> Iterator[tuple[str, _Item]]:
    for dirpath, dirnames, filenames in os.walk(top):
        base = Path(dirpath)
        rel = base.relative_to(top).as_posix()
        prefix = "" if rel == "." else rel + "/"
        for name in dirnames:
            yield prefix + name, _Item("dir", base / name)
        for name in filenames:
            if is_transient(name):
                continue
            mode = os.lstat(base / name).st_mode
            yield prefix + name, _Item("file" if stat.S_ISREG(mode) else "other", base / name)


def compare_trees(source: Path, replica: Path) -> TreeReport:
    """Compare `source` (an origin root) with `replica` (its copy)."""
    for path in (source, replica):
        if not path.is_dir():
            raise ReplicatorError(f"cannot verify: {path} is not a directory")
    report = TreeReport()
    mine, theirs = dict(_walk(source)), dict(_walk(replica))
    for rel in sorted(mine.keys() | theirs.keys()):
        a, b = mine.get(rel), theirs.get(rel)
        if a is None or b is None:
            report.differences.append(Difference(
                rel, "presence", "present" if a else "absent", "present" if b else "absent"))
        elif a.kind != b.kind:
            report.differences.append(Difference(rel, "type", a.kind, b.kind))
        elif a.kind == "file":
            _compare_file(rel, a.path, b.path, report)
    return report


def _compare_file(rel: str, a: Path, b: Path, report: TreeReport) -> None:
    report.files += 1
    data_a, data_b = a.read_bytes(), b.read_bytes()
    report.bytes_read += len(data_a) + len(data_b)
    if len(data_a) != len(data_b):
        report.differences.append(Difference(rel, "size", str(len(data_a)), str(len(data_b))))
    elif data_a != data_b:
        report.differences.append(Difference(rel, "xxh3-128", digest(data_a).hex(),
                                             digest(data_b).hex()))
