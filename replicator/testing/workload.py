"""A seeded random IMAP workload against a real Dovecot, usable from tests, bench and the demo.

One connection per user stays logged in for the whole run (as real clients do, which keeps
Dovecot's files open); each step picks a user and an operation from one `random.Random(seed)`,
so the same seed on the same starting state replays the same operations. `steps()` yields after
every operation, so a test can kill a process in the middle; `run()` runs to the end.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

from replicator.testing.imap import make_message, parse_appenduid, pop_copyuid, sha256
from replicator.testing.workload_model import (
    ExpectedMessage,
    OpRecord,
    ToldUid,
    WorkloadReport,
)

__all__ = ["ImapSource", "Workload", "WorkloadMismatch", "run_workload"]

SYSTEM_FLAGS = ("\\Seen", "\\Answered", "\\Flagged", "\\Draft")
KEYWORDS = ("$Forwarded", "$Label1", "$Junk", "Work", "todo")
TOP_NAMES = ("Archive", "Projects", "Lists", "Sent", "Drafts", "Old Mail", "Reçus")
SUB_NAMES = ("2023", "2024", "alpha", "beta", "dev", "ops", "Ärger")
WEIGHTS: Mapping[str, int] = {
    "APPEND": 30, "STORE": 24, "FETCH": 12, "EXPUNGE": 8, "COPY": 6, "MOVE": 6,
    "CREATE": 5, "RENAME": 2, "DELETE": 2, "SUBSCRIBE": 3, "UNSUBSCRIBE": 2,
}


class ImapSource(Protocol):
    """Anything that hands out logged-in imapclient clients: DovecotInstance or ImapTarget."""

    def imap(self, user: str, timeout: float = ...) -> Any: ...


class WorkloadMismatch(AssertionError):
    """The server returned flags or a body that differ from what it acknowledged earlier."""


class Workload:
    def __init__(self, source: ImapSource, users: Sequence[str], ops: int, seed: int, *,
                 min_size: int = 200, max_size: int = 64 * 1024,
                 weights: Mapping[str, int] = WEIGHTS) -> None:
        self.source, self.users, self.total = source, list(users), ops
        self.rng = random.Random(seed)
        self.min_size, self.max_size = min_size, max_size
        self.kinds, self.weights = list(weights), list(weights.values())
        self.report = WorkloadReport()
        self._conns: dict[str, Any] = {}
        self._selected: dict[str, str | None] = {}

    def run(self) -> WorkloadReport:
        for _ in self.steps():
            pass
        return self.report

    def steps(self) -> Iterator[OpRecord]:
        """Connects, loads what exists, then yields after each operation; closes at the end
        (or when the generator is closed early)."""
        try:
            for user in self.users:
                self._connect(user)
            for index in range(self.total):
                yield self._step(index)
        finally:
            self.close()

    def close(self) -> None:
        for client in self._conns.values():
            with contextlib.suppress(Exception):  # a killed server leaves no session
                client.logout()
        self._conns.clear()

    def _connect(self, user: str) -> None:
        client = self.source.imap(user)
        self._conns[user], self._selected[user] = client, None
        self.report.expected[user], self.report.uidvalidity[user] = {}, {}
        for flags, _, name in client.list_folders():
            if b"\\Noselect" not in flags and b"\\NonExistent" not in flags:
                self._load_box(user, name)

    def _load_box(self, user: str, box: str) -> None:
        client = self._select(user, box)
        uids = client.search(["ALL"])
        fetched = client.fetch(uids, ["FLAGS"]) if uids else {}
        self.report.expected[user][box] = {
            uid: ExpectedMessage(None, _flags(d[b"FLAGS"])) for uid, d in fetched.items()}

    def _step(self, index: int) -> OpRecord:
        user = self.rng.choice(self.users)
        kind = self.rng.choices(self.kinds, self.weights)[0]
        if kind in ("STORE", "FETCH", "EXPUNGE", "COPY", "MOVE") and not self._nonempty(user):
            kind = "APPEND"
        box, detail, kind = getattr(self, "_op_" + kind.lower())(index, user)
        rec = OpRecord(index, user, kind, box, detail)
        self.report.ops.append(rec)
        self.report.counts[kind] += 1
        return rec

    # --- helpers -------------------------------------------------------------------------
    def _boxes(self, user: str) -> list[str]:
        return sorted(self.report.expected[user])

    def _nonempty(self, user: str) -> list[str]:
        return [b for b in self._boxes(user) if self.report.expected[user][b]]

    def _select(self, user: str, box: str) -> Any:
        client = self._conns[user]
        if self._selected[user] != box:
            info = client.select_folder(box)
            self.report.uidvalidity[user][box] = int(info[b"UIDVALIDITY"])
            self._selected[user] = box
        return client

    def _unselect(self, user: str) -> None:
        if self._selected[user] is not None:
            self._conns[user].unselect_folder()
            self._selected[user] = None

    def _some_uids(self, user: str, box: str, most: int = 3) -> list[int]:
        uids = sorted(self.report.expected[user][box])
        return sorted(self.rng.sample(uids, min(len(uids), self.rng.randint(1, most))))

    def _random_flags(self) -> set[str]:
        pool = SYSTEM_FLAGS + KEYWORDS
        return set(self.rng.sample(pool, self.rng.randint(1, 3)))

    def _new_name(self, user: str) -> str:
        """A mailbox name that neither exists nor is the parent of an existing one. The server's
        LIST counts too: dbox keeps the empty parent directories of a renamed or deleted mailbox,
        which then exist as \\NoSelect names the model never created."""
        listed = [name for _, _, name in self._conns[user].list_folders()]
        boxes = sorted(set(self._boxes(user)) | set(listed))
        while True:
            name = self.rng.choice(TOP_NAMES)
            for _ in range(self.rng.randint(0, 2)):
                name += "/" + self.rng.choice(SUB_NAMES)
            if not any(b == name or b.startswith(name + "/") for b in boxes):
                return name

    # --- operations: each returns (mailbox, detail, kind as counted) ------------------------
    def _op_append(self, index: int, user: str) -> tuple[str, str, str]:
        box = "INBOX" if self.rng.random() < 0.5 else self.rng.choice(self._boxes(user))
        size = int(self.min_size * (self.max_size / self.min_size) ** self.rng.random())
        body = make_message(self.rng, index, size)
        flags = self._random_flags() if self.rng.random() < 0.3 else set()
        resp = self._conns[user].append(box, body, flags=sorted(flags))
        validity, uids = parse_appenduid(resp)
        digest = sha256(body)
        self.report.expected[user][box][uids[0]] = ExpectedMessage(digest, flags)
        self.report.uidvalidity[user][box] = validity
        self.report.told.append(ToldUid(user, box, validity, uids[0], digest, "APPENDUID"))
        self.report.appended_bytes += len(body)
        return box, f"uid={uids[0]} size={len(body)} flags={sorted(flags)}", "APPEND"

    def _op_store(self, index: int, user: str) -> tuple[str, str, str]:
        box = self.rng.choice(self._nonempty(user))
        client, uids, flags = self._select(user, box), self._some_uids(user, box, 5), \
            self._random_flags()
        mode = self.rng.choice(("+FLAGS", "-FLAGS", "FLAGS"))
        {"+FLAGS": client.add_flags, "-FLAGS": client.remove_flags,
         "FLAGS": client.set_flags}[mode](uids, sorted(flags), silent=True)
        for uid in uids:
            msg = self.report.expected[user][box][uid]
            msg.flags = {"+FLAGS": msg.flags | flags, "-FLAGS": msg.flags - flags,
                         "FLAGS": set(flags)}[mode]
        return box, f"{mode} {sorted(flags)} uids={uids}", "STORE"

    def _op_fetch(self, index: int, user: str) -> tuple[str, str, str]:
        """Fetches what makes Dovecot fill its cache, and checks flags and a body."""
        box = self.rng.choice(self._nonempty(user))
        client, uids = self._select(user, box), self._some_uids(user, box, 20)
        items = ["FLAGS", "ENVELOPE", "BODYSTRUCTURE", "RFC822.SIZE", "INTERNALDATE",
                 "BODY.PEEK[HEADER.FIELDS (FROM SUBJECT)]"]
        for uid, data in client.fetch(uids, items).items():
            self._check(user, box, uid, flags=_flags(data[b"FLAGS"]))
        body_uid = self.rng.choice(uids)
        data = client.fetch([body_uid], ["BODY.PEEK[]"])[body_uid]
        self._check(user, box, body_uid, digest=sha256(data[b"BODY[]"]))
        return box, f"uids={uids} body={body_uid}", "FETCH"

    def _check(self, user: str, box: str, uid: int, flags: set[str] | None = None,
               digest: str | None = None) -> None:
        want = self.report.expected[user][box][uid]
        if flags is not None and flags != want.flags:
            raise WorkloadMismatch(f"{user}/{box} uid {uid}: flags {flags} != {want.flags}")
        if digest is not None and want.sha256 is not None and digest != want.sha256:
            raise WorkloadMismatch(f"{user}/{box} uid {uid}: body differs from the appended one")

    def _op_expunge(self, index: int, user: str) -> tuple[str, str, str]:
        box = self.rng.choice(self._nonempty(user))
        client, uids = self._select(user, box), self._some_uids(user, box)
        client.add_flags(uids, ["\\Deleted"], silent=True)
        use_uid = self.rng.random() < 0.5
        client.expunge(uids) if use_uid else client.expunge()
        for uid in uids:  # no other message ever keeps \Deleted, so both forms remove these
            del self.report.expected[user][box][uid]
        return box, f"uids={uids}", "UID EXPUNGE" if use_uid else "EXPUNGE"

    def _op_copy(self, index: int, user: str, move: bool = False) -> tuple[str, str, str]:
        src = self.rng.choice(self._nonempty(user))
        dst = self.rng.choice([b for b in self._boxes(user) if b != src] or ["INBOX"])
        client, uids = self._select(user, src), self._some_uids(user, src)
        pop_copyuid(client)
        client.move(uids, dst) if move else client.copy(uids, dst)
        told = pop_copyuid(client)
        if told is None:
            raise WorkloadMismatch(f"{user}: no COPYUID for {'MOVE' if move else 'COPY'}")
        validity, pairs = told
        self.report.uidvalidity[user][dst] = validity
        for s, d in pairs:
            msg = self.report.expected[user][src][s]
            self.report.expected[user][dst][d] = ExpectedMessage(msg.sha256, set(msg.flags))
            self.report.told.append(ToldUid(user, dst, validity, d, msg.sha256, "COPYUID"))
            if move:
                del self.report.expected[user][src][s]
        return src, f"to={dst} pairs={pairs}", "MOVE" if move else "COPY"

    def _op_move(self, index: int, user: str) -> tuple[str, str, str]:
        return self._op_copy(index, user, move=True)

    def _op_create(self, index: int, user: str) -> tuple[str, str, str]:
        name = self._new_name(user)
        self._conns[user].create_folder(name)
        self.report.expected[user][name] = {}
        return name, "", "CREATE"

    def _op_rename(self, index: int, user: str) -> tuple[str, str, str]:
        candidates = [b for b in self._boxes(user) if b != "INBOX"]
        if not candidates:
            return self._op_create(index, user)
        old = self.rng.choice(candidates)
        while (new := self._new_name(user)).startswith(old + "/"):
            pass
        self._unselect(user)
        self._conns[user].rename_folder(old, new)
        moved = self.report.rename(user, old, new)
        return old, f"to={new} moved={len(moved)}", "RENAME"

    def _op_delete(self, index: int, user: str) -> tuple[str, str, str]:
        boxes = self._boxes(user)
        leaves = [b for b in boxes if b != "INBOX" and not any(c.startswith(b + "/")
                                                                for c in boxes)]
        if not leaves:
            return self._op_create(index, user)
        box = self.rng.choice(leaves)
        self._unselect(user)
        self._conns[user].delete_folder(box)
        del self.report.expected[user][box]
        self.report.uidvalidity[user].pop(box, None)
        return box, "", "DELETE"

    def _op_subscribe(self, index: int, user: str) -> tuple[str, str, str]:
        box = self.rng.choice(self._boxes(user))
        self._conns[user].subscribe_folder(box)
        return box, "", "SUBSCRIBE"

    def _op_unsubscribe(self, index: int, user: str) -> tuple[str, str, str]:
        subscribed = sorted(name for _, _, name in self._conns[user].list_sub_folders())
        if not subscribed:
            return self._op_subscribe(index, user)
        box = self.rng.choice(subscribed)
        self._conns[user].unsubscribe_folder(box)
        return box, "", "UNSUBSCRIBE"


def _flags(raw: Sequence[bytes]) -> set[str]:
    return {f.decode() for f in raw if f != b"\\Recent"}


def run_workload(source: ImapSource, users: Sequence[str], ops: int, seed: int,
                 **options: Any) -> WorkloadReport:
    """Runs `ops` seeded operations over `users` and returns what the clients were told."""
    return Workload(source, users, ops, seed, **options).run()
