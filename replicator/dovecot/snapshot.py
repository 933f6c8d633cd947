"""A comparable picture of what Dovecot says every mailbox of some users holds.

Promote and failover tests compare the snapshot of the origin before the crash with the one the
promoting node serves afterwards: same mailboxes, UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, UIDs,
flags and subscriptions. `differences()` says what differs in words a failing test can print.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from replicator.dovecot.doveadm import (
    MailboxStatus,
    fetch_all_flags,
    list_subscriptions,
    mailbox_status,
)

__all__ = ["MailboxState", "StateSnapshot", "UserState", "snapshot"]


@dataclass(frozen=True)
class MailboxState:
    status: MailboxStatus
    flags: dict[int, frozenset[str]] = field(default_factory=dict)  # uid -> flags (no \Recent)


@dataclass(frozen=True)
class UserState:
    mailboxes: dict[str, MailboxState]
    subscriptions: frozenset[str]


@dataclass(frozen=True)
class StateSnapshot:
    users: dict[str, UserState]

    def differences(self, other: StateSnapshot) -> list[str]:
        """Human-readable differences, self first ("a") and other second ("b")."""
        out: list[str] = []
        for user in sorted(self.users.keys() | other.users.keys()):
            a, b = self.users.get(user), other.users.get(user)
            if a is None or b is None:
                out.append(f"{user}: only in {'b' if a is None else 'a'}")
                continue
            out += _user_differences(user, a, b)
        return out

    def without_modseq(self) -> StateSnapshot:
        """The same snapshot with HIGHESTMODSEQ zeroed, for comparisons where a legitimate
        extra transaction (e.g. a min-next-uid update) bumps it."""
        return StateSnapshot({u: UserState(
            {n: MailboxState(_no_modseq(m.status), m.flags) for n, m in s.mailboxes.items()},
            s.subscriptions) for u, s in self.users.items()})


def _no_modseq(st: MailboxStatus) -> MailboxStatus:
    return MailboxStatus(st.messages, st.uidnext, st.uidvalidity, 0)


def _user_differences(user: str, a: UserState, b: UserState) -> list[str]:
    out = []
    if a.subscriptions != b.subscriptions:
        out.append(f"{user}: subscriptions {sorted(a.subscriptions ^ b.subscriptions)} differ")
    for name in sorted(a.mailboxes.keys() | b.mailboxes.keys()):
        ma, mb = a.mailboxes.get(name), b.mailboxes.get(name)
        if ma is None or mb is None:
            out.append(f"{user}/{name}: only in {'b' if ma is None else 'a'}")
        elif ma.status != mb.status:
            out.append(f"{user}/{name}: status {ma.status} != {mb.status}")
        elif ma.flags != mb.flags:
            uids = sorted(u for u in ma.flags.keys() | mb.flags.keys()
                          if ma.flags.get(u) != mb.flags.get(u))
            out.append(f"{user}/{name}: flags differ for UIDs {uids[:20]}")
    return out


def snapshot(conf: Path, users: Iterable[str]) -> StateSnapshot:
    """Status, UIDs with flags, and subscriptions of every mailbox of every user (3 doveadm
    runs per user)."""
    result = {}
    for user in users:
        flags = fetch_all_flags(conf, user)
        boxes = {name: MailboxState(st, flags.get(name, {}))
                 for name, st in mailbox_status(conf, user).items()}
        result[user] = UserState(boxes, frozenset(list_subscriptions(conf, user)))
    return StateSnapshot(result)
