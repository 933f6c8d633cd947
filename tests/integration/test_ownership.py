"""Ownership on etcd end to end: a real 3-member etcd, two real Dovecots running the
sync-commit plugin (`fail`), real IMAP clients, real daemons killed with SIGKILL.

What each test shows (DESIGN §10, the numbers of the issue):
1. kill -9 of node a under APPEND/STORE load: b takes a's users over by itself and serves
   them; every APPENDUID (and STORE) a client was told by a is on b under the same
   UIDVALIDITY, and b's first APPEND gets a UID above all of a's.
2. Troy's partition (network namespaces): a cut from etcd and from b, or from etcd only,
   keeps its IMAP clients, whose commits turn into tagged NO (its own lease gate); b takes
   over; no UID of the mailbox acknowledged by both nodes; nothing acknowledged lost.
3. etcd member loss: one of three killed (the leader) refuses no commit; two killed (quorum
   lost) turns commits into tagged NO under the default `on_quorum_loss = "stop"`, nothing
   acknowledged is lost, and commits resume once the members are back.
4. Switchover a -> b -> a under load: nothing lost, no hole in the UIDs (UIDNEXT not raised),
   and no OK of a between two OKs of b (nor outside the switchover windows).
5. A batch carrying an old fencing token is refused by the receiver and counted.
6. Rejoin: a node whose batches were all acknowledged sets its copy aside as superseded and
   replicates the new owner's; one that wrote after its last replicated batch says it
   diverged and serves nothing.

Nothing here asserts a duration: conditions are polled with generous deadlines, and the times
that matter (kill to takeover, kill to the first commit on b) are printed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from replicator.dovecot.doveadm import fetch_body_hashes, fetch_flags, mailbox_status
from replicator.dovecot.instance import DovecotInstance
from replicator.testing.etcd import EtcdCluster, have_etcd
from replicator.testing.failover import body_bytes
from replicator.testing.imap import parse_appenduid, sha256
from replicator.testing.netns import HostPair, Star
from replicator.testing.scenario import TwoNodes, two_nodes
from tests.integration.daemon_support import coordination

pytestmark = pytest.mark.integration
USERS = ("u1", "u2")
MAILBOX = "INBOX"
DEADLINE = 60.0  # seconds: a safety bound for every wait, never what is asserted


def poll(condition: Callable[[], object], what: str, timeout: float = DEADLINE) -> Any:
    """The first truthy value of `condition()`; AssertionError naming `what` after
    `timeout` s. The 20 ms pause is a poll interval, not a synchronisation."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)
    return value


def ownership(node: Any) -> dict[str, Any]:
    """The `ownership` block of a daemon's status ({} while it does not answer)."""
    try:
        status = node.status()
    except (OSError, TimeoutError):
        return {}
    return dict(status.get("ownership") or {})


def serves(node: Any, users: Sequence[str]) -> bool:
    return set(users) <= set(ownership(node).get("serving", []))


# -- IMAP load -----------------------------------------------------------------------------------

@dataclass
class Reply:
    """One tagged answer: which node gave it, to what, and the client's time window around it
    (monotonic: `sent` just before the command went out, `received` just after the answer)."""

    node: str
    user: str
    op: str                 # "append" | "store"
    ok: bool
    sent: float
    received: float
    validity: int = 0
    uid: int = 0            # APPEND: the UID APPENDUID named; STORE: the UID flagged
    digest: str = ""
    text: str = ""          # a NO's text


@dataclass
class Writer:
    """APPENDs (and every `store_every`-th op a UID STORE +FLAGS \\Flagged of the last UID its
    session appended) for one user, in a thread, until stopped. `route()` names the nodes to
    try for each op, in order: the next only when one answers NO or cannot be reached."""

    dovecots: dict[str, DovecotInstance]
    user: str
    route: Callable[[], list[str]]
    tag: str
    store_every: int = 0
    pause_after_no: float = 0.0
    replies: list[Reply] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)   # connection failures (not answers)
    _clients: dict[str, Any] = field(default_factory=dict)
    _validity: dict[str, int] = field(default_factory=dict)  # of each session's SELECT
    _session_uids: dict[str, list[int]] = field(default_factory=dict)  # appended there
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _count: int = 0

    def start(self) -> Writer:
        self._thread = threading.Thread(target=self._run, name=f"writer-{self.tag}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[Reply]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(DEADLINE)
            assert not self._thread.is_alive(), f"writer {self.tag} did not stop"
        for client in self._clients.values():
            with contextlib.suppress(Exception):
                client.shutdown()
        self._clients.clear()
        return self.replies

    def oks(self, op: str = "append", node: str | None = None) -> list[Reply]:
        return [r for r in list(self.replies)
                if r.ok and r.op == op and (node is None or r.node == node)]

    def refusals(self) -> list[Reply]:
        return [r for r in list(self.replies) if not r.ok]

    def _run(self) -> None:
        while not self._stop.is_set():
            nodes = self.route()
            if not nodes:
                time.sleep(0.02)  # nobody to send to yet (the router knows no live owner)
                continue
            if not any(self._one(node) for node in nodes) and self.pause_after_no:
                time.sleep(self.pause_after_no)  # the load's pace while refused, not a wait

    def _client(self, node: str) -> Any:
        client = self._clients.get(node)
        if client is None:
            client = self.dovecots[node].imap(self.user, timeout=DEADLINE)
            selected = client.select_folder(MAILBOX)
            self._validity[node] = int(selected[b"UIDVALIDITY"])
            self._session_uids[node] = []
            self._clients[node] = client
        return client

    def _drop(self, node: str, exc: BaseException) -> None:
        self.errors.append(f"{node}: {type(exc).__name__}: {exc}")
        client = self._clients.pop(node, None)
        if client is not None:
            with contextlib.suppress(Exception):
                client.shutdown()
        time.sleep(0.02)  # a killed Dovecot refuses at once: do not spin on it

    def _one(self, node: str) -> bool:
        """One op on `node`; True when it answered OK. An APPEND that got no OK is recorded
        with its digest too: under `fail` a NO leaves the message committed where it was
        made, and a connection lost mid-command leaves its outcome unknown."""
        import imapclient.exceptions as imap_errors

        try:
            client = self._client(node)
        except Exception as exc:
            self._drop(node, exc)
            return False
        self._count += 1
        # A STORE names the last UID this same session appended, as a client stores flags
        # of messages its session knows: IMAP answers a STORE of a UID the session does not
        # see with OK and changes nothing, which would prove nothing here.
        mine = self._session_uids.setdefault(node, [])
        store = bool(self.store_every and mine and self._count % self.store_every == 0)
        op = "store" if store else "append"
        message = body_bytes(self.user, self._count) + \
            f"writer {self.tag} op {self._count}\r\n".encode()
        digest = "" if store else sha256(message)
        sent = time.monotonic()
        try:
            if store:
                uid = mine[-1]
                client.add_flags([uid], [b"\\Flagged"], silent=True)
                reply = Reply(node, self.user, op, True, sent, time.monotonic(),
                              self._validity[node], uid)
            else:
                response = client.append(MAILBOX, message)
                received = time.monotonic()
                validity, uids = parse_appenduid(response)
                reply = Reply(node, self.user, op, True, sent, received, validity, uids[0],
                              digest)
                mine.append(uids[0])
        except (imap_errors.IMAPClientAbortError, OSError, EOFError) as exc:
            self.replies.append(Reply(node, self.user, op, False, sent, time.monotonic(),
                                      digest=digest, text=f"connection lost: {exc}"))
            self._drop(node, exc)
            return False
        except imap_errors.IMAPClientError as exc:  # a tagged NO (or BAD)
            self.replies.append(Reply(node, self.user, op, False, sent, time.monotonic(),
                                      digest=digest, text=str(exc)))
            return False
        self.replies.append(reply)
        return True


def wait_for_oks(writers: Sequence[Writer], count: int, what: str, node: str | None = None
                 ) -> None:
    poll(lambda: all(len(w.oks(node=node)) >= count for w in writers),
         f"{count} acknowledged APPENDs per user ({what})")


def append_once(dovecot: DovecotInstance, user: str, index: int) -> Reply:
    """One APPEND on a fresh connection: its Reply (ok False with the NO's text)."""
    import imapclient.exceptions as imap_errors

    message = body_bytes(user, index)
    sent = time.monotonic()
    try:
        client = dovecot.imap(user, timeout=DEADLINE)
    except (OSError, imap_errors.IMAPClientError) as exc:
        return Reply(dovecot.name, user, "append", False, sent, time.monotonic(), text=str(exc))
    try:
        validity, uids = parse_appenduid(client.append(MAILBOX, message))
        return Reply(dovecot.name, user, "append", True, sent, time.monotonic(), validity,
                     uids[0], sha256(message))
    except (OSError, imap_errors.IMAPClientError) as exc:  # NO, or BYE and a closed socket
        return Reply(dovecot.name, user, "append", False, sent, time.monotonic(),
                     digest=sha256(message), text=str(exc))
    finally:
        with contextlib.suppress(Exception):
            client.logout()


def missing_on(dovecot: DovecotInstance, replies: Sequence[Reply]) -> list[str]:
    """Every acknowledged APPEND whose UID does not hold exactly its body on `dovecot`, and
    every acknowledged STORE whose flag is not there (doveadm, mailbox by mailbox)."""
    missing: list[str] = []
    for user in sorted({r.user for r in replies}):
        bodies = fetch_body_hashes(dovecot.config_path, user, MAILBOX)
        flags = fetch_flags(dovecot.config_path, user, MAILBOX)
        for reply in replies:
            if reply.user != user or not reply.ok:
                continue
            if reply.op == "append" and bodies.get(reply.uid) != reply.digest:
                missing.append(f"{user} UID {reply.uid} (APPEND OK from {reply.node} in "
                               f"[{reply.sent:.3f}, {reply.received:.3f}])")
            if reply.op == "store" and "\\Flagged" not in flags.get(reply.uid, frozenset()):
                missing.append(f"{user} UID {reply.uid} \\Flagged (STORE OK from {reply.node} "
                               f"in [{reply.sent:.3f}, {reply.received:.3f}])")
    return missing


def status_of(dovecot: DovecotInstance, user: str) -> Any:
    return mailbox_status(dovecot.config_path, user, (MAILBOX,))[MAILBOX]


def claim_on_a(nodes: TwoNodes, users: Sequence[str] = USERS) -> list[Reply]:
    """One APPEND per user on a (its first commit claims the user for a; a NO while the
    claim is under way is retried), then wait until a serves them. Every reply."""
    replies: list[Reply] = []

    def first(user: str, index: int) -> bool:
        replies.append(append_once(nodes.dovecot_a, user, index))
        return replies[-1].ok

    for index, user in enumerate(users):
        poll(lambda u=user, i=index: first(u, i), f"a first APPEND for {user} on a")
    poll(lambda: serves(nodes.repl_a, users), "a to serve its users")
    return replies


def summary(writers: Sequence[Writer]) -> str:
    lines = []
    for writer in writers:
        counts: dict[tuple[str, str, bool], int] = {}
        for reply in list(writer.replies):
            key = (reply.node, reply.op, reply.ok)
            counts[key] = counts.get(key, 0) + 1
        lines.append(f"writer {writer.tag}: {counts}")
        lines += [f"  {r.node} {r.op} {'OK' if r.ok else 'NO'} {r.text[:160]}"
                  for r in list(writer.replies)[-5:]]
        lines += [f"  error {e[:160]}" for e in writer.errors[-3:]]
    return "\n".join(lines)


@contextlib.contextmanager
def explained(nodes: TwoNodes, writers: Sequence[Writer] = ()) -> Iterator[None]:
    """A failed assertion inside carries what the writers saw and the daemons' log tails."""
    try:
        yield
    except AssertionError as exc:
        logs = "\n".join(f"--- {n.node_id} log\n{n.log_text()[-4000:]}\n--- {n.node_id} "
                         f"ownership\n{json.dumps(ownership(n))}"
                         for n in (nodes.repl_a, nodes.repl_b))
        logs += "".join(f"\n--- Dovecot {d.name} errors\n" + "\n".join(d.error_lines()[-8:])
                        for d in (nodes.dovecot_a, nodes.dovecot_b))
        for d in (nodes.dovecot_a, nodes.dovecot_b):  # a daemon-made directory Dovecot
            for top in (d.layout.index_root, d.layout.control_root):  # cannot write in
                with contextlib.suppress(OSError):  # the daemons still move things
                    logs += "".join(f"\nroot-owned: {p}" for p in sorted(top.rglob("*"))
                                    if p.lstat().st_uid == 0 and not p.name.startswith("."))
        raise AssertionError(f"{exc}\n{summary(writers)}\n{logs}") from exc


def save(tmp_path: Path, replies: Sequence[Reply], **more: Any) -> None:
    """Every reply (and `more`) as JSON beside the nodes, for a post-mortem."""
    from dataclasses import asdict

    (tmp_path / "replies.json").write_text(json.dumps(
        {"replies": [asdict(r) for r in replies], **more}, indent=0))


def kept(tmp_path: Path) -> Path:
    """The nodes' base directory, made beforehand so that two_nodes leaves it (logs, state,
    quarantine) for a post-mortem: pytest keeps the last three runs' tmp_path."""
    base = tmp_path / "nodes"
    base.mkdir()
    return base


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "replicator", *args], capture_output=True,
                            text=True, timeout=DEADLINE * 3)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {result.returncode}:\n"
                             f"{result.stdout}\n{result.stderr[-3000:]}")
    return result


# -- 1. kill -9 of the owner under load -----------------------------------------------------------

@pytest.mark.parametrize("mail_format", ["mdbox", "maildir"])
def test_kill9_of_the_owner_under_load_b_takes_over_and_keeps_every_appenduid(
        tmp_path: Path, etcd: EtcdCluster, mail_format: str) -> None:
    with two_nodes(mail_format, USERS, base=kept(tmp_path),  # type: ignore[arg-type]
                   sync_commit="fail", coordination=coordination(etcd.endpoints)) as nodes:
        claimed = claim_on_a(nodes)
        dovecots = {"a": nodes.dovecot_a, "b": nodes.dovecot_b}
        writers = [Writer(dovecots, user, lambda: ["a"], f"kill-{user}", store_every=4).start()
                   for user in USERS]
        wait_for_oks(writers, 15, "load on a")
        nodes.dovecot_a.kill9()
        nodes.repl_a.kill9()
        killed = time.monotonic()
        replies = claimed + [r for w in writers for r in w.stop()]
        told = [r for r in replies if r.ok]
        validity = {r.user: r.validity for r in told}
        assert all(r.validity == validity[r.user] for r in told), "one UIDVALIDITY per user"

        poll(lambda: serves(nodes.repl_b, USERS), "b to take over and serve a's users")
        serving_after = time.monotonic() - killed
        # b commits alone: a holds no lease, so b waits for no ack from it (quorum_counts =
        # "live", the default)
        first = poll(lambda: (r := append_once(nodes.dovecot_b, USERS[0], 1000)).ok and r,
                     "a first acknowledged APPEND on b")
        first_commit_after = time.monotonic() - killed
        owners = ownership(nodes.repl_b)["owners"]
        assert {u: owners[u]["node"] for u in USERS} == {u: "b" for u in USERS}
        assert missing_on(nodes.dovecot_b, told) == []
        for user in USERS:
            assert status_of(nodes.dovecot_b, user).uidvalidity == validity[user]
        highest = max(r.uid for r in told if r.op == "append" and r.user == USERS[0])
        assert first.validity == validity[USERS[0]]
        assert first.uid > highest, f"b handed out UID {first.uid}, a had told {highest}"
        print(f"\n{mail_format}: {len(told)} acknowledged ops on a; kill -9 -> b serving "
              f"{serving_after:.2f} s; -> first OK APPEND on b {first_commit_after:.2f} s")


# -- 4. switchover a -> b -> a under load ---------------------------------------------------------

class Router:
    """What a proxy does: ask etcd who owns the user and send the command there. With
    `fallback`, a command the owner refuses (or that cannot reach it) is sent to the other
    node next: the client that would catch a node accepting what it must refuse."""

    def __init__(self, endpoints: Sequence[str]) -> None:
        from replicator.coordination.config import DEFAULT_PREFIX, CoordinationConfig
        from replicator.coordination.etcd import Etcd
        from replicator.coordination.keys import Keys

        self.etcd = Etcd(CoordinationConfig(tuple(endpoints), request_timeout=1.0))
        self.keys = Keys(DEFAULT_PREFIX)

    def owner(self, user: str) -> tuple[str | None, bool]:
        """The owner etcd names, and whether it serves the user yet (`owner` exits 0)."""
        from replicator.coordination.commands import read_view
        from replicator.coordination.etcd import EtcdUnavailable

        try:
            view, _ = read_view(self.etcd, self.keys)
        except EtcdUnavailable:
            return None, False
        owner = view.owner(user)
        return (owner.node, view.ready(user)) if owner is not None else (None, False)

    def route(self, user: str, fallback: bool) -> Callable[[], list[str]]:
        def nodes() -> list[str]:
            owner, ready = self.owner(user)
            if not fallback:  # a proxy: only to an owner that serves the user
                return [owner] if owner is not None and ready else []
            first = owner or "a"
            return [first, "b" if first == "a" else "a"]
        return nodes


def interleaved(replies: Sequence[Reply]) -> list[str]:
    """OKs of a that must lie both after one of b's and before one of b's (a, b, a is the only
    order ownership allows: an OK of a is either before every OK of b or after every one).
    An OK is certainly before another when it was received before the other was sent."""
    a = [r for r in replies if r.ok and r.node == "a"]
    b = [r for r in replies if r.ok and r.node == "b"]
    if not b:
        return []
    first_b_done = min(r.received for r in b)
    last_b_sent = max(r.sent for r in b)
    return [f"{r.op} UID {r.uid} on a in [{r.sent:.3f}, {r.received:.3f}] between b's OKs "
            f"done at {first_b_done:.3f} and sent at {last_b_sent:.3f}"
            for r in a if r.sent > first_b_done and r.received < last_b_sent]


@pytest.mark.parametrize(("mail_format", "fallback"), [("maildir", True), ("mdbox", False)],
                         ids=["maildir-both-nodes", "mdbox-owner-only"])
def test_switchover_there_and_back_under_load_loses_nothing_and_never_overlaps(
        tmp_path: Path, etcd: EtcdCluster, mail_format: str, fallback: bool) -> None:
    """With `fallback` the client tries the other node whenever one answers NO, so both
    nodes get commits throughout; on mdbox it does not (see below) and goes only to the
    owner etcd names once that serves the user, as a proxy following on_owner_change does.

    Why not on mdbox: a node that does not own a user must not open its mailbox at all
    there. Its Dovecot builds an index of its own over the shared storage (`m.1 already
    exists, rebuilding index`) and writes into the same m.* files as the owner; the plugin
    refuses the commit afterwards, but the owner's messages are damaged already (seen here:
    "Cached message size smaller than expected"). Only routing (the proxy) prevents that."""
    with two_nodes(mail_format, USERS, base=kept(tmp_path),  # type: ignore[arg-type]
                   sync_commit="fail", coordination=coordination(etcd.endpoints)) as nodes:
        claimed = claim_on_a(nodes)
        config = str(nodes.repl_a.config_path)
        shown = json.loads(cli("owner", "--config", config, *USERS, "--json").stdout)
        assert {u: shown["owners"][u]["node"] for u in USERS} == {u: "a" for u in USERS}
        assert all(shown["owners"][u]["ready"] and shown["owners"][u]["alive"] for u in USERS)
        dovecots = {"a": nodes.dovecot_a, "b": nodes.dovecot_b}
        router = Router(etcd.endpoints)
        writers = [Writer(dovecots, user, router.route(user, fallback), f"switch-{user}",
                          store_every=5).start() for user in USERS]
        with explained(nodes, writers):
            wait_for_oks(writers, 10, "load on a")
            windows = []
            for target, other in (("b", "a"), ("a", "b")):
                before = {w.user: len(w.oks(node=target)) for w in writers}
                started = time.monotonic()
                moved = json.loads(cli("switchover", "--config", config, "--to", target,
                                       "--json").stdout)
                windows.append((started, time.monotonic()))
                assert moved["state"] == "done" and moved["from"] == other, moved
                poll(lambda t=target, n=before: all(len(w.oks(node=t)) >= n[w.user] + 10
                                                    for w in writers),
                     f"10 more acknowledged APPENDs per user on {target}")
        replies = claimed + [r for w in writers for r in w.stop()]
        save(tmp_path, replies, windows=windows)
        (s1, e1), (s2, e2) = windows

        for user in USERS:
            mine = [r for r in replies if r.user == user]
            assert interleaved(mine) == [], user
            for reply in (r for r in mine if r.ok):
                if reply.node == "b":
                    assert reply.received > s1 and reply.sent < e2, reply
                else:
                    assert reply.sent < e1 or reply.received > s2, reply
            assert any(r.ok and r.node == "a" and r.received < s1 for r in mine)
            assert any(r.ok and r.node == "b" for r in mine)
            assert any(r.ok and r.node == "a" and r.sent > e2 for r in mine)

        nodes.dovecot_a.wait_idle()
        nodes.repl_a.barrier()
        assert serves(nodes.repl_a, USERS) and not serves(nodes.repl_b, USERS[:1])
        assert missing_on(nodes.dovecot_a, replies) == [], f"switchovers {windows}"
        for user in USERS:
            mine = [r for r in replies if r.user == user and r.op == "append"]
            told = [r for r in mine if r.ok]
            assert len({r.validity for r in told}) == 1, "one UIDVALIDITY throughout"
            bodies = fetch_body_hashes(nodes.dovecot_a.config_path, user, MAILBOX)
            status = status_of(nodes.dovecot_a, user)
            # UIDs have no hole: neither handover raised UIDNEXT (a UID gap would leave one).
            # Under `fail` an APPEND answered NO stays committed where it was made, so the
            # mailbox may hold such messages beside the acknowledged ones: nothing else.
            assert sorted(bodies) == list(range(1, status.uidnext)), \
                f"{user}: UIDs {sorted(bodies)[:5]}... UIDNEXT {status.uidnext}"
            refused = {r.digest for r in mine if not r.ok}
            foreign = [uid for uid, digest in bodies.items()
                       if digest not in {r.digest for r in told} | refused]
            assert foreign == [], f"{user}: messages nobody appended"
            highest = max(r.uid for r in told)
            print(f"\n{user}: {len(told)} APPENDs acknowledged ({sum(r.node == 'b' for r in told)}"
                  f" by b), {sum(not r.ok for r in mine)} answered NO; highest UID told "
                  f"{highest}, UIDNEXT {status.uidnext}; switchovers took "
                  f"{e1 - s1:.2f} s and {e2 - s2:.2f} s")


# -- 5. a stale owner's batch ---------------------------------------------------------------------

def speak_as_origin(port: int, origin: str, server: str, epoch: int,
                    messages: Sequence[Any]) -> list[Any]:
    """Open a replication connection to `server` as `origin` (the cluster's pre-shared key, as
    a real node proves itself), send `messages` and return what the server answered until it
    acknowledged or refused the last batch."""
    from replicator.testing.cluster import TEST_PSK
    from replicator.wire.auth import ClientAuth
    from replicator.wire.messages import Ack, Batch, ErrorMessage, Hello, Nack
    from replicator.wire.session import Session

    session = Session("client")
    auth = ClientAuth(TEST_PSK, origin, server, "origin")
    last = max(m.seq for m in messages if isinstance(m, Batch))
    answers: list[Any] = []

    def receive(sock: socket.socket) -> list[Any]:
        while True:
            data = sock.recv(1 << 16)
            if not data:
                raise AssertionError(f"{server} closed the connection; answers {answers}")
            if got := session.receive_data(data):
                return got

    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock:
        sock.sendall(session.send(auth.hello(Hello(origin, "origin", "test", epoch,
                                                   "stale-owner-test", sync_policy="fail"))))
        (challenge,) = receive(sock)
        sock.sendall(session.send(auth.answer(challenge)))
        (hello,) = receive(sock)
        auth.check_server(hello)
        sock.sendall(b"".join(session.send(m) for m in messages))
        while not any((isinstance(a, Ack | Nack) and a.seq == last)
                      or isinstance(a, ErrorMessage) for a in answers):
            answers += receive(sock)
    return answers


def replace_op(path: str, body: bytes) -> Any:
    from replicator.delta.ops import Meta, Op, OpCode, Result
    from replicator.hashing import digest

    return Op(OpCode.REPLACE, path, data=body, raw_size=len(body),
              result=Result(len(body), digest(body)),
              meta=Meta(0o600, 8, 8, 1_700_000_000_000_000_000))


def test_a_batch_with_an_old_token_is_refused_and_counted(tmp_path: Path,
                                                          etcd: EtcdCluster) -> None:
    """After a switchover a -> b, a batch from a carrying a's old token for the user (what a
    stale owner, paused or cut off, would still send) is refused by b and counted; the same
    batch with the current token is applied (so the token, nothing else, refused it)."""
    from replicator.delta.ops import encode_ops
    from replicator.wire.messages import Ack, Batch, Nack, Resync

    user = USERS[0]
    with two_nodes("mdbox", (user,), base=kept(tmp_path), sync_commit="fail",
                   coordination=coordination(etcd.endpoints)) as nodes:
        claim_on_a(nodes, (user,))
        config = str(nodes.repl_a.config_path)
        old = json.loads(cli("owner", "--config", config, user, "--json").stdout)
        moved = json.loads(cli("switchover", "--config", config, "--to", "b", "--json").stdout)
        assert moved["state"] == "done", moved
        new = json.loads(cli("owner", "--config", config, user, "--json").stdout)
        old_token, new_token = old["owners"][user]["token"], new["owners"][user]["token"]
        assert new["owners"][user]["node"] == "b" and new_token > old_token
        poll(lambda: ownership(nodes.repl_b)["owners"][user]["token"] == new_token,
             "b to see the new token")
        nodes.repl_a.stop()  # the stale owner's connection is the one below

        replica = nodes.repl_b.replica_of("a", "index") / user
        target = replica / "dovecot.list.index.log"
        before = target.read_bytes()
        refused_before = nodes.repl_b.status()["replicas"]["a"]["stale_token_refused"]
        fence = max(1, int(nodes.repl_b.status()["replicas"]["a"]["fence"]))
        stale = encode_ops([replace_op(f"{user}/dovecot.list.index.log", b"stale owner")])
        current = encode_ops([replace_op(f"{user}/token-check", b"current owner")])
        answers = speak_as_origin(nodes.repl_b.port, "a", "b", fence, [
            Resync("stale-owner-test", 1),
            Batch(fence, "stale-owner-test", 1, "index", user, token=old_token,
                  payload=stale),
            Batch(fence, "stale-owner-test", 2, "index", user, token=new_token,
                  payload=current)])

        nacks = [a for a in answers if isinstance(a, Nack)]
        assert [n.seq for n in nacks] == [1], answers
        assert nacks[0].reason.startswith("stale owner token"), nacks[0].reason
        assert any(isinstance(a, Ack) and a.seq == 2 for a in answers), answers
        assert target.read_bytes() == before, "the stale batch changed the replica"
        assert (replica / "token-check").read_bytes() == b"current owner"
        status = nodes.repl_b.status()["replicas"]["a"]
        assert status["stale_token_refused"] == refused_before + 1, status
        assert f"token {old_token} is older than {new_token}" in nodes.repl_b.log_text()


# -- 3. etcd member loss and quorum loss ----------------------------------------------------------

def leader_index(etcd: EtcdCluster) -> int:
    """The running member that leads now."""
    for index, member in enumerate(etcd.members):
        if member.running():
            status = member.client(timeout=2.0).status()
            if int(status["header"]["member_id"]) == int(status["leader"]):
                return index
    raise AssertionError("no member leads")


def keepalives(node: Any) -> int:
    return int(ownership(node).get("counters", {}).get("keepalives", 0))


def test_etcd_member_loss_changes_nothing_and_quorum_loss_stops_commits(
        tmp_path: Path, etcd: EtcdCluster) -> None:
    """One member of three killed (the leader: the harder case) under APPEND load: not one
    commit refused while it is down, nor after it is back. Two killed (quorum lost), under
    the default on_quorum_loss = "stop": commits turn into tagged NO once a's lease can no
    longer be certain, b takes nothing over, nothing acknowledged is lost, and commits go
    through again once the members are back.

    The leader's loss costs an election, during which no keep-alive succeeds; it must fit in
    what is left of the commit window after the last keep-alive (TTL - margin - TTL/3). At
    TTL 2 s that is under a second, which an election on a loaded 2-CPU machine exceeded (a
    run refused commits for that long); this test runs the default TTL 5 s, margin 1 s, as
    README advises for production (2.3 s of room)."""
    with two_nodes("mdbox", USERS[:1], base=kept(tmp_path), sync_commit="fail",
                   coordination=coordination(etcd.endpoints, lease_ttl=5,
                                             margin=1.0)) as nodes:
        replies = claim_on_a(nodes, USERS[:1])
        dovecots = {"a": nodes.dovecot_a, "b": nodes.dovecot_b}
        writer = Writer(dovecots, USERS[0], lambda: ["a"], "members", store_every=4).start()
        with explained(nodes, [writer]):
            wait_for_oks([writer], 10, "load on a")
            phases = {}
            for phase in ("one member down", "all members back"):
                begun, ticks = time.monotonic(), keepalives(nodes.repl_a)
                if phase == "one member down":
                    killed = leader_index(etcd)
                    etcd.kill9(killed)
                else:
                    etcd.restart(killed)
                    etcd.wait_healthy()
                # two TTLs of keep-alives (three per TTL) with the load running throughout
                poll(lambda t=ticks: keepalives(nodes.repl_a) >= t + 6,
                     f"six keep-alives with {phase}")
                count = len(writer.oks())
                poll(lambda c=count: len(writer.oks()) >= c + 10, f"ten APPENDs ({phase})")
                phases[phase] = [r for r in list(writer.replies)
                                 if r.sent >= begun and r.received <= time.monotonic()]
            replies += writer.stop()
            for phase, seen in phases.items():
                refused = [r.text for r in seen if not r.ok]
                assert refused == [], f"{phase}: {len(refused)} refused: {refused[:3]}"
                assert sum(r.ok for r in seen) >= 10, phase

            # quorum lost: two of three down
            survivor = (killed + 1) % 3
            lost_at = time.monotonic()
            for index in range(3):
                if index != survivor:
                    etcd.kill9(index)
            no = poll(lambda: (r := append_once(nodes.dovecot_a, USERS[0], 2000)).ok is False
                      and r, "a tagged NO once the quorum is gone")
            refused_after = time.monotonic() - lost_at
            replies.append(no)
            assert "UNAVAILABLE" in no.text, no.text
            later = append_once(nodes.dovecot_a, USERS[0], 2001)
            assert not later.ok and "no valid ownership lease" in later.text, later.text
            assert ownership(nodes.repl_b)["owners"][USERS[0]]["node"] == "a"
            assert not serves(nodes.repl_b, USERS[:1])

            for index in range(3):
                if index != survivor:
                    etcd.restart(index)
            etcd.wait_healthy()
            back = poll(lambda: (r := append_once(nodes.dovecot_a, USERS[0], 2002)).ok and r,
                        "a commit on a once the quorum is back")
            replies.append(back)
            assert serves(nodes.repl_a, USERS[:1])
            nodes.dovecot_a.wait_idle()
            assert missing_on(nodes.dovecot_a, [r for r in replies if r.ok]) == []
        print(f"\nquorum lost: first NO after {refused_after:.2f} s; "
              f"{sum(len(p) for p in phases.values())} commits while one member was down "
              "or back, none refused")


# -- 6. the old owner comes back ----------------------------------------------------------------

def quarantined(node: Any, kind: str, user: str) -> list[Path]:
    """Where the node set `user`'s index directory aside as `kind` (superseded|diverged)."""
    return sorted((node.state_dir / "quarantine").glob(f"{kind}-*/index/{user}"))


def test_a_rejoining_owner_whose_batches_were_all_acked_steps_aside_cleanly(
        tmp_path: Path, etcd: EtcdCluster) -> None:
    """a's last batches were all acknowledged (quiesce and barrier, then kill -9); b takes
    over; a comes back: it serves none of the users, its own copy goes to quarantine as
    `superseded` (not diverged), a commit on a is refused, and b's copy replicates to a
    again (a's replica of b verifies against b)."""
    with two_nodes("mdbox", USERS, base=kept(tmp_path), sync_commit="fail",
                   coordination=coordination(etcd.endpoints)) as nodes:
        replies = claim_on_a(nodes)
        replies += [append_once(nodes.dovecot_a, user, 10 + i)
                    for i, user in enumerate(USERS * 2)]
        nodes.quiesce()
        nodes.dovecot_a.kill9()
        nodes.repl_a.kill9()
        poll(lambda: serves(nodes.repl_b, USERS), "b to take a's users over")
        replies.append(poll(lambda: (r := append_once(nodes.dovecot_b, USERS[0], 20)).ok and r,
                            "a commit on b"))

        nodes.repl_a.start()
        nodes.dovecot_a.start()
        with explained(nodes):
            poll(lambda: all(quarantined(nodes.repl_a, "superseded", u) for u in USERS),
                 "a to set its copies aside as superseded")
            state = ownership(nodes.repl_a)
            assert not set(USERS) & set(state["serving"]), state
            assert state["diverged"] == {}, state
            assert {state["owners"][u]["node"] for u in USERS} == {"b"}
            assert not any(quarantined(nodes.repl_a, "diverged", u) for u in USERS)
            # the daemon logs once the copy is moved: the move is seen first
            poll(lambda: "superseded" in nodes.repl_a.log_text(), "a to log the set-aside")
            # the plugin asks OWNER at login: a refuses the user before opening anything
            # (imap: "OK Logged in, but initialization failed", then BYE: the next command
            # meets a closed connection), and its log names b (Dovecot's log process writes
            # the line after the client has its answer: wait for it)
            refused = append_once(nodes.dovecot_a, USERS[0], 30)
            assert not refused.ok, refused.text
            poll(lambda: f"User {USERS[0]} refused, another node serves it" in
                 "\n".join(nodes.dovecot_a.error_lines()), "a's Dovecot to log the refusal")

            # b commits with a's acknowledgement now (a holds a lease again)
            replies.append(poll(lambda: (r := append_once(nodes.dovecot_b, USERS[1], 21)).ok
                                and r, "a commit on b with a back"))
            nodes.repl_b.barrier()
            verified = cli("verify", "--config", str(nodes.repl_a.config_path), "--origin", "b",
                           check=False)
            assert verified.returncode == 0, verified.stdout + verified.stderr
            assert missing_on(nodes.dovecot_b, [r for r in replies if r.ok]) == []
        refused_tokens = nodes.repl_b.status()["replicas"]["a"]["stale_token_refused"]
        print(f"\nb refused {refused_tokens} batch(es) of the returning a for its old token")


def test_a_rejoining_owner_that_wrote_after_its_last_replicated_batch_says_it_diverged(
        tmp_path: Path, etcd: EtcdCluster) -> None:
    """a's daemon is paused (SIGSTOP: a VM freeze, a long GC pause) while a client APPENDs on
    a: the plugin times out and answers NO, but Dovecot has committed the message on a's disk
    (a wrote after its last replicated batch). b takes over once a's lease is gone and
    commits. a resumes: it refuses to serve the user and says why (status `diverged`, the
    log), its copy kept aside as `diverged` for a merge; b's copy is untouched."""
    user = USERS[0]
    with two_nodes("mdbox", (user,), base=kept(tmp_path), sync_commit="fail",
                   coordination=coordination(etcd.endpoints)) as nodes:
        replies = claim_on_a(nodes, (user,))
        replies += [append_once(nodes.dovecot_a, user, 10 + i) for i in range(3)]
        nodes.quiesce()
        assert nodes.repl_a.process is not None
        paused = nodes.repl_a.process.pid
        os.killpg(paused, signal.SIGSTOP)
        try:
            unacked = append_once(nodes.dovecot_a, user, 40)
            assert not unacked.ok, "a paused daemon cannot confirm a commit"
            poll(lambda: serves(nodes.repl_b, (user,)), "b to take the user over")
            replies.append(poll(lambda: (r := append_once(nodes.dovecot_b, user, 41)).ok and r,
                                "a commit on b"))
        finally:
            os.killpg(paused, signal.SIGCONT)
        with explained(nodes):
            state = poll(lambda: user in (s := ownership(nodes.repl_a)).get("diverged", {})
                         and s, "a to say the user diverged")
            assert user not in state["serving"] and state["owners"][user]["node"] == "b"
            # the daemon logs once it recorded the divergence: the record is seen first
            poll(lambda: "diverged" in nodes.repl_a.log_text(), "a to log the divergence")
            assert quarantined(nodes.repl_a, "diverged", user)
            assert not quarantined(nodes.repl_a, "superseded", user)
            assert serves(nodes.repl_b, (user,))
            assert missing_on(nodes.dovecot_b, [r for r in replies if r.ok]) == []
            bodies = fetch_body_hashes(nodes.dovecot_b.config_path, user, MAILBOX)
            assert unacked.digest not in bodies.values(), "the unacknowledged APPEND is a's"
        refused_tokens = nodes.repl_b.status()["replicas"]["a"]["stale_token_refused"]
        print(f"\nb refused {refused_tokens} batch(es) of the resumed a for its old token")


# -- 2. Troy's partition --------------------------------------------------------------------------

@dataclass
class Partitioned:
    """a and b each in a network namespace, the three etcd members in a third one between
    them (a Star: one link center-a, one center-b, routed, so a and b reach each other
    through the center). Cutting link 0 cuts a from etcd and from b at once; `cut_etcd`
    drops only a's traffic to and from the members."""

    star: Star
    etcd: EtcdCluster

    @property
    def hosts(self) -> HostPair:
        return HostPair(self.star.leaves[0], self.star.leaves[1])

    def cut_all(self) -> None:
        self.star.pairs[0].cut()

    def cut_etcd(self) -> None:
        member = self.star.center[0].address
        self.star.leaves[0].nft(
            "table inet dretcd {\n"
            f"  chain in {{ type filter hook input priority 0; ip saddr {member} drop; }}\n"
            f"  chain out {{ type filter hook output priority 0; ip daddr {member} drop; }}\n"
            "}\n")

    def heal(self) -> None:
        self.star.pairs[0].heal()
        subprocess.run(self.star.leaves[0].exec("nft", "delete", "table", "inet", "dretcd"),
                       capture_output=True)


def _ip(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


@pytest.fixture
def partitioned(tmp_path: Path, plugin_dir: Path) -> Iterator[Partitioned]:
    if (reason := have_etcd()) is not None:
        pytest.skip(reason)
    star = Star.create(2)
    try:
        center = star.center
        for leaf, via in zip(star.leaves, center, strict=True):
            _ip(*leaf.exec("ip", "route", "add", "10.232.0.0/16", "via", via.address))
        _ip(*center[0].exec("sysctl", "-q", "-w", "net.ipv4.ip_forward=1"))
        members = EtcdCluster.create(tmp_path / "etcd", hosts=[center[0].address] * 3,
                                     wrap=[center[0].exec()] * 3)
        try:
            members.start()
            yield Partitioned(star, members)
        finally:
            members.stop()
    finally:
        star.close()


@pytest.mark.parametrize("cut", ["etcd-and-b", "etcd-only"])
def test_troys_partition_a_refuses_b_takes_over_no_uid_twice_nothing_lost(
        tmp_path: Path, partitioned: Partitioned, cut: str) -> None:
    """Troy's scenario: a keeps running and keeps its IMAP clients (Dovecot and the test stay
    on the host, the plugin reaches a's daemon over its unix socket) but its daemon loses
    etcd, and b (`etcd-and-b`: the link is cut) or only etcd (`etcd-only`: a still reaches b,
    so b would go on acknowledging a's batches: only a's lease stops a). APPENDs keep coming
    to a throughout, and to b once b serves. a's commits turn into tagged NO, b takes over by
    itself, no UID of the mailbox is handed out by both nodes, and every acknowledged APPEND
    is on b afterwards.

    maildir: both Dovecots keep writing into the shared mail directory during the partition
    (in production a replicated filesystem); mdbox storage files would be appended to by two
    map indexes at once, which no ownership can prevent for a node that keeps running."""
    user = USERS[0]
    with two_nodes("maildir", (user,), base=kept(tmp_path), sync_commit="fail",
                   hosts=partitioned.hosts,
                   coordination=coordination(partitioned.etcd.endpoints)) as nodes:
        replies = claim_on_a(nodes, (user,))
        dovecots = {"a": nodes.dovecot_a, "b": nodes.dovecot_b}
        on_a = Writer(dovecots, user, lambda: ["a"], "partition-a", pause_after_no=0.05).start()
        on_b: Writer | None = None
        with explained(nodes, [on_a]):
            wait_for_oks([on_a], 10, "load on a")
            partitioned.cut_all() if cut == "etcd-and-b" else partitioned.cut_etcd()
            cut_at = time.monotonic()  # the rules are in place
            try:
                poll(lambda: serves(nodes.repl_b, (user,)), "b to take the user over")
                took_over = time.monotonic()
                on_b = Writer(dovecots, user, lambda: ["b"], "partition-b",
                              pause_after_no=0.05).start()
                wait_for_oks([on_b], 10, "load on b")
                refused = len(on_a.refusals())
                poll(lambda: len(on_a.refusals()) >= refused + 5, "a to go on refusing")
            finally:
                partitioned.heal()
            poll(lambda: user not in ownership(nodes.repl_a).get("serving", [user]),
                 "a, healed, not to serve the user")
            count = len(on_b.oks())
            poll(lambda: len(on_b.oks()) >= count + 5, "b to go on committing after the heal")
        replies += on_a.stop() + on_b.stop()
        save(tmp_path, replies, cut_at=cut_at, took_over=took_over)

        from_a = [r for r in replies if r.node == "a"]
        # a's lease, last renewed before the cut, ends at most lease_ttl after it, and a
        # stops acknowledging `margin` earlier: a commit sent after that cannot get an OK
        settings = coordination(())
        deadline = cut_at + settings["lease_ttl"] - settings["margin"]
        late = [r for r in from_a if r.ok and r.sent > deadline]
        assert late == [], f"a acknowledged commits sent after its lease: {late[:3]}"
        if cut == "etcd-and-b":  # and without b nothing can be acknowledged at all
            late = [r for r in from_a if r.ok and r.sent > cut_at]
            assert late == [], f"a acknowledged commits sent after the cut: {late[:3]}"
        last_ok = max(r.received for r in from_a if r.ok)
        first_b = min(r.sent for r in on_b.oks())
        assert last_ok < took_over <= first_b
        after = [r for r in from_a if r.sent > deadline]
        assert after and all(not r.ok for r in after)
        assert any("no valid ownership lease" in r.text for r in after), \
            "a's lease ran out and its own gate refused (not only a missing ack)"
        told_a = {(r.validity, r.uid) for r in from_a if r.ok and r.op == "append"}
        told_b = {(r.validity, r.uid) for r in on_b.oks()}
        assert told_a and told_b and not told_a & told_b, sorted(told_a & told_b)[:5]
        assert missing_on(nodes.dovecot_b, [r for r in replies if r.ok]) == []
        print(f"\n{cut}: a's last OK {last_ok - cut_at:+.2f} s after the cut, b serving "
              f"{took_over - cut_at:.2f} s after it; {len(after)} APPENDs on a refused, "
              f"{len(told_b)} acknowledged by b")
