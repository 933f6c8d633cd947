"""Manifests on the wire: what a replica (or an origin) holds, and what differs.

A manifest is a list of entries `(root, path, kind, size, digest)` sent as JSON lines (the frame
compresses them). The origin diffs a replica's manifest against its own to find the directories
that need whole files (`untrusted`), which is how a peer that restarted, fell behind the retained
window, or was never synced is repaired without copying what it already has.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from replicator.capture.manifest import Manifest
from replicator.errors import PathError, ProtocolError
from replicator.hashing import DIGEST_SIZE, digest
from replicator.paths import ROOT_NAME, check_relpath, join_rel, parent_rel
from replicator.wire import strict_json

DirKey = tuple[str, str]
_HEX = re.compile(r"[0-9a-f]+")


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
    """The entries of a manifest from a peer; ProtocolError for any line that is not exactly
    `[root, path, "f"|"d", size, digest]` with a configured-style root name, a normalized
    relative path, 0 <= size < 2**63 and a hex digest (empty for a directory)."""
    try:
        return [_decode_entry(line) for line in payload.splitlines()]
    except MemoryError:
        raise ProtocolError(f"out of memory decoding a manifest of {len(payload)} bytes") from None


def _decode_entry(line: bytes) -> Entry:
    value = strict_json.loads(line, f"manifest entry {line[:80]!r}")
    if not isinstance(value, list) or len(value) != 5:
        raise ProtocolError(f"manifest entry {line[:80]!r} is not a list of 5 fields")
    root = strict_json.checked_str(value[0], "manifest entry root")
    path = strict_json.checked_str(value[1], "manifest entry path")
    kind = strict_json.checked_str(value[2], "manifest entry kind")
    size = strict_json.checked_int(value[3], "manifest entry size")
    hexdigest = strict_json.checked_str(value[4], "manifest entry digest")
    if not ROOT_NAME.fullmatch(root):
        raise ProtocolError(f"manifest entry root {root[:80]!r} is not a root name")
    try:
        check_relpath(path, allow_empty=True)
    except PathError as exc:
        raise ProtocolError(f"manifest entry in {root}: {exc}") from None
    if kind not in ("f", "d"):
        raise ProtocolError(f"manifest entry kind {kind[:20]!r} (expected f or d)")
    if not (hexdigest == "" or (len(hexdigest) == 2 * DIGEST_SIZE
                                and _HEX.fullmatch(hexdigest))):
        raise ProtocolError(f"manifest entry digest {hexdigest[:80]!r} is not a hex digest")
    return Entry(root, path, kind, size, hexdigest)


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
