"""What a verification found, in a form both people (a table) and programs (JSON) can use.

A difference names the file (relative to the replica: `<root>/<path>`), the field (`bytes`,
`xxh3-128`, `presence`, or a Dovecot header field such as `next_uid`), what was expected (the
origin's or the journal's value, or what Dovecot requires) and what was found. Exit codes: 0
consistent, 1 differences, 2 could not verify (`errors`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Difference:
    file: str
    field: str
    expected: str
    found: str
    check: str = "bytes"  # bytes | journal | dovecot | state (a directory the receiver
    #                       marked broken: a batch for it was refused or applied only in part)


@dataclass
class MailboxStatus:
    user: str
    mailbox: str
    messages: int
    uidnext: int
    uidvalidity: int
    highestmodseq: int


@dataclass
class VerifyReport:
    mode: str
    origin: str = ""
    source: str = ""
    replica: str = ""
    files: int = 0
    bytes_read: int = 0
    seconds: float = 0.0
    differences: list[Difference] = field(default_factory=list)
    warnings: list[Difference] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    mailboxes: list[MailboxStatus] = field(default_factory=list)

    @property
    def consistent(self) -> bool:
        return not self.differences and not self.errors

    @property
    def exit_code(self) -> int:
        return 2 if self.errors else 1 if self.differences else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "consistent": self.consistent, "exit_code": self.exit_code, "mode": self.mode,
            "origin": self.origin, "source": self.source, "replica": self.replica,
            "files": self.files, "bytes_read": self.bytes_read,
            "seconds": round(self.seconds, 3),
            "differences": [asdict(d) for d in self.differences],
            "warnings": [asdict(d) for d in self.warnings],
            "errors": list(self.errors),
            "mailboxes": [asdict(m) for m in self.mailboxes],
        }
