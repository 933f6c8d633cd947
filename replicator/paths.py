"""Paths that cross the wire: checked strictly on both ends, never trusted by the receiver.

A path on the wire is relative to one configured root, uses `/` separators, is normalized (no
empty, `.` or `..` components), holds no NUL and is at most `MAX_PATH_BYTES` long. The receiver
also refuses to follow symlinks when it resolves one under its replica directory.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from replicator.errors import PathError

MAX_PATH_BYTES = 4096
ROOT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
NODE_ID = ROOT_NAME


@lru_cache(maxsize=65536)  # both ends check the same few paths for every batch; errors are not kept
def check_relpath(path: str, *, allow_empty: bool = False) -> str:
    """Return `path` if it is an acceptable relative path, else raise PathError saying why."""
    if path == "" and allow_empty:
        return path
    if not path:
        raise PathError("empty path")
    if "\x00" in path:
        raise PathError(f"path {path!r} contains NUL")
    if path.startswith("/"):
        raise PathError(f"path {path!r} is absolute")
    if len(os.fsencode(path)) > MAX_PATH_BYTES:
        raise PathError(f"path of {len(path)} characters is too long")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise PathError(f"path {path!r} is not normalized (empty, '.' or '..' component)")
    return path


def check_root_name(name: str, known: frozenset[str] | set[str]) -> str:
    """Return `name` if it is one of the configured root names."""
    if name not in known:
        raise PathError(f"unknown root {name!r} (configured: {', '.join(sorted(known)) or 'none'})")
    return name


PROMOTE_AREA = ".promote-"  # promote's staging and backup directories: .promote-<...>


def is_promote_area(reldir: str, name: str) -> bool:
    """Whether `name` in `reldir` is a directory promote makes at the top of a root (where
    it stages users before renaming them into place, and keeps what they replaced): this
    node's own, never replicated. Capturing it would ship every staged file to the peers,
    and then the same files again once renamed into place."""
    return not reldir and name.startswith(PROMOTE_AREA)


def in_promote_area(relpath: str) -> bool:
    """Whether `relpath` (relative to a root) lies in one of promote's directories."""
    return is_promote_area("", relpath.partition("/")[0])


def join_rel(reldir: str, name: str) -> str:
    """`reldir/name`, where an empty `reldir` is the root itself."""
    return f"{reldir}/{name}" if reldir else name


def parent_rel(relpath: str) -> str:
    """The relative directory holding `relpath` ('' for the root)."""
    return relpath.rpartition("/")[0]


def wire_path_under(root: Path | str, path: str, *,
                    proven: Callable[[str], bool] | None = None) -> str | None:
    """The wire path of the absolute `path` below `root`, proven to stay there; None when
    `path` is elsewhere; PathError when it is malformed or would lead out of `root`.

    The path comes from an unauthenticated local client (a FLUSH), so text is not enough: it
    must pass `_lexical_path_under`, and no component that exists below `root` may be a
    symlink (Dovecot never makes one under its INDEX or CONTROL roots; following one would
    let the client point the root daemon at any directory). Components that do not exist
    are fine: the directory was removed. `proven(rel)` is the caller's proof that `root/rel`
    has no symlink on its way (Capture.watched: inotify watches it); the lstat per component
    is made where it says False.
    """
    rel = _lexical_path_under(root, path)
    if rel is not None and not (proven is not None and proven(rel)):
        refuse_symlinks(root, rel)
    return rel


def _lexical_path_under(root: Path | str, path: str) -> str | None:
    """`path`'s wire path below `root` by its text alone (None when it names no place below
    `root`). `..` is refused outright (never resolved lexically: with a symlink `a/..` is not
    `.`), empty and `.` components are dropped, and the remainder must pass
    `check_relpath`."""
    if "\x00" in path:
        raise PathError(f"path {path[:200]!r} contains NUL")
    if not path.startswith("/"):
        raise PathError(f"path {path[:200]!r} is not absolute")
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise PathError(f"path {path[:200]!r} has a '..' component")
    base = _components(os.fspath(root))
    if parts[:len(base)] != base:
        return None
    return check_relpath("/".join(parts[len(base):]), allow_empty=True)


@lru_cache(maxsize=64)  # a root's components, for every FLUSH: the configured roots only
def _components(root: str) -> list[str]:
    return [part for part in root.split("/") if part not in ("", ".")]


def refuse_symlinks(root: Path | str, rel: str) -> None:
    """PathError if an existing component of `root/rel` below `root` is a symlink."""
    current = os.fspath(root)
    for part in rel.split("/") if rel else []:
        current = f"{current}/{part}"
        try:
            mode = os.lstat(current).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return
        if stat.S_ISLNK(mode):
            raise PathError(f"{current} is a symlink (never followed under a root)")
