"""Where ownership lives in etcd, below the configured prefix (see coordination.view)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from replicator.coordination.etcd import Entry
from replicator.coordination.view import Owner, View


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
            elif kind == "owners" and name:
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
