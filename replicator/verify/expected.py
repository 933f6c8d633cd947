"""What a replica's digest journal accepts for each file, and the difference a file's bytes
make against it.

`verify --local` walks a whole replica against its journal; promote checks each user's files
as it copies them (one read per file instead of two), so the journal's expectations are split
by user here and handed, as JSON, to whichever process stages that user.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from replicator.hashing import digest
from replicator.replica.journal import DigestJournal, Expected
from replicator.verify.model import Difference


@dataclass
class Expectations:
    """Journal entries (paths `<root>/<path>`): the state each file must hold, and for files
    of a batch cut short by a crash, every state each may hold."""

    files: dict[str, Expected] = field(default_factory=dict)
    uncertain: dict[str, list[Expected | None]] = field(default_factory=dict)

    def paths(self) -> set[str]:
        return set(self.files) | set(self.uncertain)

    def difference(self, rel: str, data: bytes | None) -> Difference | None:
        """None when `data` (None: no such file) is a state the journal accepts for `rel`."""
        found = None if data is None else (len(data), digest(data).hex())
        if found in (self.uncertain.get(rel) or [self.files.get(rel)]):
            return None
        expected = self.files.get(rel)
        if found is None or expected is None:
            return Difference(rel, "presence", _where(expected is not None),
                              _where(found is not None), "journal")
        return Difference(rel, "xxh3-128", f"{expected[1]} ({expected[0]} bytes)",
                          f"{found[1]} ({found[0]} bytes)", "journal")

    def to_json(self) -> dict[str, Any]:
        return {"files": self.files, "uncertain": self.uncertain}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Expectations:
        """The inverse of to_json (JSON turns the (size, digest) tuples into lists)."""
        return cls({rel: _expected(state) for rel, state in data["files"].items()},
                   {rel: [None if s is None else _expected(s) for s in states]
                    for rel, states in data["uncertain"].items()})


def of_journal(journal: DigestJournal) -> Expectations:
    return Expectations(journal.files, journal.uncertain)


def split_by_user(whole: Expectations) -> tuple[dict[str, Expectations], Expectations]:
    """({user: the entries below `<root>/<user>/` in any root}, the entries directly in a
    root, which belong to no user)."""
    users: dict[str, Expectations] = {}
    loose = Expectations()
    for source, kind in ((whole.files, "files"), (whole.uncertain, "uncertain")):
        for rel, state in source.items():
            parts = rel.split("/", 2)
            target = users.setdefault(parts[1], Expectations()) if len(parts) == 3 else loose
            getattr(target, kind)[rel] = state
    return users, loose


def _expected(state: list[Any] | tuple[Any, ...]) -> Expected:
    return int(state[0]), str(state[1])


def _where(present: bool) -> str:
    return "present" if present else "absent"
