"""Where ownership lives in etcd, below the configured prefix (see coordination.view)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from replicator.coordination.etcd import Entry
from replicator.coordination.view import Owner, View
from replicator.errors import PathError
from replicator.paths import check_relpath

log = logging.getLogger("replicator.coordination")
_WARNED: set[str] = set()


def is_user_name(name: str) -> bool:
    """A user directory name as the roots hold them: one path component, not hidden. Names
    from etcd end up in paths (promote, quarantine): anything else is ignored, with a warning
    (anyone who can write below the prefix could otherwise name `../../etc`)."""
    try:
        check_relpath(name)
    except PathError:
        return _warn(name)
    return ("/" not in name and not name.startswith(".")) or _warn(name)


def _warn(name: str) -> bool:
    if len(_WARNED) < 100 and name not in _WARNED:
        _WARNED.add(name)
        log.warning("ignoring owner key for %r in etcd: not a user directory name", name[:200])
    return False


@dataclass(frozen=True)
class Keys:
    prefix: str

    @property
    def all(self) -> str:
        return f"{self.prefix}/"

    def node(self, node: str) -> str:
        return f"{self.prefix}/nodes/{node}"

    def owner(self, user: str) -> str:
        return f"{self.prefix}/owners/{user}"

    def serving(self, node: str) -> str:
        return f"{self.prefix}/serving/{node}"

    def alone(self, node: str) -> str:
        return f"{self.prefix}/alone/{node}"

    def switchover(self, ident: str) -> str:
        return f"{self.prefix}/switchover/{ident}"

    def view(self, revision: int, entries: list[Entry]) -> tuple[View, list[Entry]]:
        """The ownership view, and the switchover requests, from one read of the prefix."""
        alive: set[str] = set()
        pending: dict[str, tuple[int, int]] = {}
        alone: set[str] = set()
        owners: dict[str, Owner] = {}
        requests: list[Entry] = []
        for entry in entries:
            kind, _, name = entry.key[len(self.all):].partition("/")
            if kind == "nodes" and name:
                alive.add(name)
            elif kind == "owners" and is_user_name(name):
                owner = Owner.parse(entry.value, entry.mod_revision)
                if owner is not None:
                    owners[name] = owner
            elif kind == "switchover" and name:
                requests.append(entry)
            elif kind == "serving" and name:
                pending[name] = (_pending(entry.value), entry.mod_revision)
            elif kind == "alone" and name:
                alone.add(name)
        return View(revision, frozenset(alive), owners, pending, frozenset(alone)), requests


def _pending(raw: bytes) -> int:
    try:
        return int(json.loads(raw)["pending"])
    except (ValueError, KeyError, TypeError):
        return 0
