"""Manifests on the wire: what a replica (or an origin) holds, and what differs.

A manifest is a list of entries `(root, path, kind, size, digest)` sent as JSON lines (the frame
compresses them). The origin diffs a replica's manifest against its own to find the directories
that need whole files (`untrusted`), which is how a peer that restarted, fell behind the retained
window, or was never synced is repaired without copying what it already has.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from replicator.capture.manifest import Manifest
from replicator.errors import ProtocolError
from replicator.hashing import digest
from replicator.paths import check_relpath, join_rel, parent_rel

DirKey = tuple[str, str]


@dataclass(frozen=True)
class Entry:
    root: str
    path: str
    kind: str          # "f" file, "d" directory
    size: int = 0
    digest: str = ""


def encode_entries(entries: Iterable[Entry]) -> bytes:
    return b"".join(
        json.dumps([e.root, e.path, e.kind, e.size, e.digest], separators=(",", ":")).encode()
        + b"\n" for e in entries)


def decode_entries(payload: bytes) -> list[Entry]:
    entries = []
    for line in payload.splitlines():
        try:
            root, path, kind, size, value = json.loads(line)
            entries.append(Entry(str(root), check_relpath(str(path), allow_empty=True),
                                 str(kind), int(size), str(value)))
        except (ValueError, TypeError) as exc:
            raise ProtocolError(f"bad manifest entry {line[:80]!r}: {exc}") from None
    return entries


def origin_entries(manifest: Manifest) -> Iterator[Entry]:
    """What the origin last shipped (the state every in-sync replica holds)."""
    for root in manifest.roots():
        for reldir, entry in manifest.dirs(root):
            yield Entry(root, reldir, "d")
            for name, file_entry in entry.files.items():
                shipped = file_entry.shipped
                yield Entry(root, join_rel(reldir, name), "f", shipped.size, shipped.digest.hex())


def tree_entries(base: Path, roots: Iterable[str]) -> Iterator[Entry]:
    """Every directory and file under `base/<root>` (a replica, or an origin's own roots when
    `base` maps root names to their directories through symlink-free joins)."""
    for root in roots:
        top = base / root
        if top.is_dir():
            yield from walk_entries(root, top)


def walk_entries(root: str, top: Path, *, skip: Iterable[str] = ()) -> Iterator[Entry]:
    skipped = set(skip)
    for dirpath, _subdirs, filenames in os.walk(top):
        rel = Path(dirpath).relative_to(top).as_posix()
        reldir = "" if rel == "." else rel
        yield Entry(root, reldir, "d")
        for name in sorted(filenames):
            path = Path(dirpath) / name
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode) or name in skipped:
                continue
            yield Entry(root, join_rel(reldir, name), "f", st.st_size,
                        digest(path.read_bytes()).hex())


def diff(origin: Iterable[Entry], replica: Iterable[Entry]) -> dict[DirKey, set[str]]:
    """Directories (known to the origin) whose listed files a replica lacks or has wrong;
    an empty set means only the listing differs (extra entries, missing directory)."""
    mine = {(e.root, e.path): e for e in origin}
    theirs = {(e.root, e.path): e for e in replica}
    origin_dirs = {k for k, e in mine.items() if e.kind == "d"}
    untrusted: dict[DirKey, set[str]] = {}
    for key in mine.keys() | theirs.keys():
        a, b = mine.get(key), theirs.get(key)
        if a == b:
            continue
        root, path = key
        kind = a.kind if a is not None else b.kind if b is not None else "f"
        anchor = _nearest(origin_dirs, root, path if kind == "d" else parent_rel(path))
        if anchor is None:
            continue
        names = untrusted.setdefault(anchor, set())
        if a is not None and a.kind == "f" and anchor == (root, parent_rel(path)):
            names.add(path.rpartition("/")[2])
    return untrusted


def _nearest(origin_dirs: set[DirKey], root: str, reldir: str) -> DirKey | None:
    while True:
        if (root, reldir) in origin_dirs:
            return (root, reldir)
        if not reldir:
            return None
        reldir = parent_rel(reldir)
