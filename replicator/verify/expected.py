"""What a replica's digest journal accepts for each file, and the difference a file's bytes
make against it.

`verify --local` walks a whole replica against its journal. Promote takes each file's state
as it copies it (one read per file serves both), in whichever process stages that user, and
checks those states against the journal's entries for the user (split_by_user) once both are
there: the copy starts before the journal has loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
        return self.difference_of(rel, None if data is None else state_of(data))

    def difference_of(self, rel: str, found: Expected | None) -> Difference | None:
        """`difference` for a file whose state (state_of its bytes) was taken elsewhere: a
        promote helper takes the states of the files it copies before the journal is
        loaded."""
        if found in (self.uncertain.get(rel) or [self.files.get(rel)]):
            return None
        expected = self.files.get(rel)
        if found is None or expected is None:
            return Difference(rel, "presence", _where(expected is not None),
                              _where(found is not None), "journal")
        return Difference(rel, "xxh3-128", f"{expected[1]} ({expected[0]} bytes)",
                          f"{found[1]} ({found[0]} bytes)", "journal")


def state_of(data: bytes) -> Expected:
    """What the journal records of a file holding `data`: its size and xxh3-128."""
    return len(data), digest(data).hex()


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


def _where(present: bool) -> str:
    return "present" if present else "absent"
