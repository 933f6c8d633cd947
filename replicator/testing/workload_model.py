"""What the workload's IMAP clients were told, kept as the expected state of every mailbox.

The model is the workload's own oracle: every UID comes from an APPENDUID or COPYUID the server
sent, every flag from a STORE the server acknowledged. Tests compare it with doveadm (same
mailboxes, UIDs, flags) and, after a failover, check that no UID a client was told is lost.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

__all__ = ["ExpectedMessage", "OpRecord", "ToldUid", "WorkloadReport"]


@dataclass
class ExpectedMessage:
    sha256: str | None  # None for messages that existed before the workload started
    flags: set[str]


@dataclass(frozen=True)
class ToldUid:
    """One UID the server announced: APPENDUID for an append, COPYUID for a copy or move."""

    user: str
    mailbox: str  # name at the time (a later RENAME moves the message, not this record)
    uidvalidity: int
    uid: int
    sha256: str | None
    via: str  # "APPENDUID" | "COPYUID"


@dataclass(frozen=True)
class OpRecord:
    """One operation as done: equal seeds on equal starting states give equal lists of these."""

    index: int
    user: str
    kind: str
    mailbox: str
    detail: str


@dataclass
class WorkloadReport:
    counts: Counter[str] = field(default_factory=Counter)
    appended_bytes: int = 0
    told: list[ToldUid] = field(default_factory=list)
    ops: list[OpRecord] = field(default_factory=list)
    # user -> mailbox -> uid -> message, for every mailbox the workload knows to exist
    expected: dict[str, dict[str, dict[int, ExpectedMessage]]] = field(default_factory=dict)
    uidvalidity: dict[str, dict[str, int]] = field(default_factory=dict)

    def expected_flags(self, user: str) -> dict[str, dict[int, frozenset[str]]]:
        """mailbox -> uid -> flags, shaped like doveadm.fetch_all_flags (empty boxes kept)."""
        return {box: {uid: frozenset(m.flags) for uid, m in msgs.items()}
                for box, msgs in self.expected[user].items()}

    def expected_counts(self, user: str) -> dict[str, int]:
        return {box: len(msgs) for box, msgs in self.expected[user].items()}

    def rename(self, user: str, old: str, new: str) -> list[str]:
        """Applies an IMAP RENAME (children move along); returns the old names that moved."""
        moved = [b for b in self.expected[user] if b == old or b.startswith(old + "/")]
        for box in moved:
            target = new + box[len(old):]
            self.expected[user][target] = self.expected[user].pop(box)
            if box in self.uidvalidity[user]:
                self.uidvalidity[user][target] = self.uidvalidity[user].pop(box)
        return moved
