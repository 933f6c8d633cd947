"""Which users this node has put in place (claimed, or promoted) and under which token.

A user owned by this node in etcd is served only once its record here carries the same token:
after a takeover or a handover the owner key moves first and the promote follows, and until the
promote is done every commit for that user is refused. Kept in state_dir (durable), written
only when ownership changes.
"""

from __future__ import annotations

import json
from pathlib import Path

from replicator.replica.state import save_json


class OwnedRecord:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            raw = json.loads(path.read_text())
            self._tokens = {str(u): int(t) for u, t in raw.get("users", {}).items()}
        except (FileNotFoundError, ValueError, AttributeError):
            self._tokens = {}

    def token(self, user: str) -> int:
        return self._tokens.get(user, 0)

    def users(self) -> set[str]:
        return set(self._tokens)

    def record(self, tokens: dict[str, int]) -> None:
        self._tokens.update(tokens)
        self._save()

    def drop(self, users: set[str]) -> None:
        for user in users:
            self._tokens.pop(user, None)
        self._save()

    def _save(self) -> None:
        save_json(self.path, {"users": self._tokens}, durable=True)
