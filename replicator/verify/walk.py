"""A fast walk of a tree: one scandir per directory, file types from the directory entries
(no stat per file), plain strings instead of Path objects. Verifying 10 000 mailboxes spends
its time here, so it matters (pathlib made it 3x slower)."""

from __future__ import annotations

import os
from collections.abc import Iterator

from replicator.dovecot.filekinds import is_transient


def walk(top: str) -> Iterator[tuple[str, list[str]]]:
    """(relative dir, regular non-transient file names) for `top` and every directory below;
    the top itself is ''."""
    stack = [""]
    while stack:
        rel = stack.pop()
        path = os.path.join(top, rel) if rel else top
        files: list[str] = []
        try:
            entries = list(os.scandir(path))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                stack.append(f"{rel}/{entry.name}" if rel else entry.name)
            elif entry.is_file(follow_symlinks=False) and not is_transient(entry.name):
                files.append(entry.name)
        yield rel, files


def files_under(top: str) -> Iterator[str]:
    """Relative paths of the regular, non-transient files below `top`."""
    for rel, names in walk(top):
        for name in names:
            yield f"{rel}/{name}" if rel else name
