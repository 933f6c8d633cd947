"""A user's index/control trees as one digest, so two nodes can tell whether they hold the same
copy: the new owner records the digest of the replica it promoted, and the old owner, coming
back, compares its own disk with it (equal: it rejoins cleanly; different: it diverged)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import xxhash

from replicator.dovecot.filekinds import is_transient


def user_digest(roots: Mapping[str, Path], user: str) -> str:
    """xxh3-128 over (root, relative path, size, content) of every regular, non-transient file
    below each root's `user` directory, in sorted order; "" when the user has no directory."""
    outer = xxhash.xxh3_128()
    found = False
    for name in sorted(roots):
        top = roots[name] / user
        if not top.is_dir() or top.is_symlink():
            continue
        found = True
        for path in sorted(_files(top)):
            data = path.read_bytes()
            outer.update(f"{name}\0{path.relative_to(top).as_posix()}\0{len(data)}\0".encode())
            outer.update(xxhash.xxh3_128_digest(data))
    return outer.hexdigest() if found else ""


def _files(top: Path) -> list[Path]:
    found: list[Path] = []
    for directory, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(directory, d))]
        for name in files:
            path = Path(directory, name)
            if not is_transient(name) and path.is_file() and not path.is_symlink():
                found.append(path)
    return found
