"""A local attacker against real daemons: what an unprivileged user (uid 65534, in a real
subprocess) can do through the control socket, which every local user may reach.

It must not make the root daemon read and ship a file outside the roots (a FLUSH naming `..`
or a path through a symlink), nor make peers believe this node's plugin fails IMAP writes it
cannot replicate (which lets a promote use a UID gap of 0), nor hold the daemon's descriptors,
crash a connection handler with a long line, or read user names from STATUS. No Dovecot
needed: the roots are plain directories written by the test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from replicator.control import protocol
from replicator.testing.cluster import PeerSpec, ReplicatorNode, stop_all
from replicator.testing.tmpfs import small_tmpfs
from tests.integration.daemon_support import poll

pytestmark = pytest.mark.integration
NOBODY = 65534
OTHER_UID = 65533  # a second unprivileged user (a mail user, say)
SECRET = b"0600 root-only secret that must never leave this host\n" * 4
VERSION = protocol.VERSION_LINE  # what the daemon answers (the attacker speaks 1.0)

# The attacker: plain Python run as an unprivileged uid, talking the control protocol.
ATTACKER = r'''
import json, resource, socket, sys

mode, path = sys.argv[1], sys.argv[2]
VERSION = "VERSION\treplicator-control\t1\t0"

def connect():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(60)
    s.connect(path)
    return s

def read_line(s):
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    return buf.decode(errors="replace").rstrip("\n")

def ask(s, line):
    try:
        s.sendall(line.encode() + b"\n")
    except OSError:
        pass  # closed on us: its reason is still in our receive buffer
    return read_line(s)

if mode == "requests":  # one connection, one reply per request; then: closed after?
    s = connect()
    replies = [ask(s, VERSION)] + [ask(s, line) for line in sys.argv[3:]]
    print(json.dumps({"replies": replies, "then": read_line(s) if "--eof" in sys.argv else None}))
elif mode == "hold":  # open n connections, say how each was answered, hold them until stdin ends
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    held, answers = [], {}
    for _ in range(int(sys.argv[3])):
        s = connect()
        first = ask(s, VERSION).split("\t")[0] or "closed"
        answers[first] = answers.get(first, 0) + 1
        held.append(s)
    print(json.dumps(answers), flush=True)
    sys.stdin.read()
elif mode == "idle":  # handshake, then silence: what the daemon does about it
    s = connect()
    s.settimeout(300)
    print(json.dumps({"version": ask(s, VERSION), "then": read_line(s)}))
'''


def run_as(uid: int, *args: str, timeout: float = 120) -> Any:
    """The attacker script's JSON answer, run as `uid` (no groups)."""
    done = subprocess.run(["/usr/bin/python3", "-c", ATTACKER, *args], user=uid, group=uid,
                          extra_groups=[], capture_output=True, text=True, timeout=timeout,
                          check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def flush(request_id: int, policy: str, user: str, *dirs: str, timeout_ms: int = 3000) -> str:
    return "\t".join(["FLUSH", str(request_id), str(timeout_ms), policy, user, *dirs])


def files_holding(tree: Path, needle: bytes) -> list[Path]:
    return [p for p in tree.rglob("*") if p.is_file() and not p.is_symlink()
            and needle in p.read_bytes()]


def fd_count(node: ReplicatorNode) -> int:
    assert node.process is not None
    return len(os.listdir(f"/proc/{node.process.pid}/fd"))


@contextmanager
def nodes(replication_a: dict[str, Any] | None = None,
          ram_b: Path | None = None) -> Iterator[tuple[ReplicatorNode, ReplicatorNode, Path]]:
    """Daemons a and b replicating to each other, in a directory every uid may traverse
    (the attacker must reach a's control socket and its own user directory)."""
    base = Path(tempfile.mkdtemp(prefix="hostile-", dir="/tmp"))
    base.chmod(0o755)
    roots = {n: {r: base / n / r for r in ("index", "control")} for n in ("a", "b")}
    for path in (p for r in roots.values() for p in r.values()):
        path.mkdir(parents=True)
    fast = {"reconnect_max_delay": 0.2}
    a = ReplicatorNode(base / "repl-a", "a", roots["a"],
                       replication={**fast, **(replication_a or {})})
    b = ReplicatorNode(base / "repl-b", "b", roots["b"], replication=fast, ram=ram_b)
    a.peers, b.peers = [PeerSpec("b", b.port)], [PeerSpec("a", a.port)]
    try:
        b.start()
        a.start()
        for node in (a, b):
            node.workdir.chmod(0o755)
        yield a, b, base
    finally:
        stop_all([a, b])
        shutil.rmtree(base, ignore_errors=True)


def write(path: Path, data: bytes, owner: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if owner is not None:
        os.chown(path.parent, owner, owner)


def test_flush_cannot_make_the_daemon_read_outside_its_roots() -> None:
    """`..` in a FLUSH and a symlink the mail user planted in its own directory: the secret
    is never read (the origin's read counter stands still), never reaches b, both FLUSHes get
    a FAIL saying why, and the link keeps replicating."""
    with nodes() as (a, b, base):
        root = a.roots["index"]
        write(root / "u1" / "box" / "dovecot.index.log", b"first")
        (root / "u2").mkdir()
        os.chown(root / "u2", NOBODY, NOBODY)
        hidden = base / "hidden"
        write(hidden / "box" / "dovecot.index", SECRET)
        (hidden / "box" / "dovecot.index").chmod(0o600)
        hidden.chmod(0o700)
        a.barrier(timeout=20)
        read_before = a.status()["counters"]["bytes_read"]

        subprocess.run(["/usr/bin/python3", "-c",
                        "import os, sys; os.symlink(sys.argv[1], sys.argv[2])",
                        str(hidden), str(root / "u2" / "mail")],
                       user=NOBODY, group=NOBODY, extra_groups=[], check=True, timeout=30)
        answer = run_as(NOBODY, "requests", str(a.control_socket),
                        flush(1, "fail", "u2", f"{root}/../../hidden/box"),
                        flush(2, "fail", "u2", f"{root}/u2/mail/box"),
                        flush(3, "fail", "u2", f"{root}/u2/../../../hidden/box"))
        replies = answer["replies"][1:]
        assert [r.split("\t")[:2] for r in replies] == [["FAIL", "1"], ["FAIL", "2"],
                                                        ["FAIL", "3"]], replies
        assert all("refused" in r for r in replies), replies
        assert a.status()["counters"]["bytes_read"] == read_before  # nothing was read

        a.barrier(timeout=20)  # the link was not stalled by a batch b refuses
        write(root / "u1" / "box" / "dovecot.index.log", b"second")
        a.barrier(timeout=20)
        assert (b.replica_of("a", "index") / "u1" / "box" / "dovecot.index.log").read_bytes() \
            == b"second"
        assert files_holding(b.replica_dir, SECRET) == []
        assert "refused" in a.log_text()


def recorded_policy(b: ReplicatorNode) -> str:
    state = json.loads((b.replica_dir / "a" / ".applied.json").read_text())
    return str(state["sync_policy"])


def b_learns_a_again(a: ReplicatorNode, b: ReplicatorNode, change: Path) -> None:
    """Restart b, so a's link says HELLO (with its announced policy) again, and wait until b
    acknowledged a change made after that (its state, with the policy, is saved by then)."""
    b.stop()
    b.start()
    write(change, os.urandom(16))
    a.barrier(timeout=30)


def test_a_flush_cannot_raise_the_policy_peers_record() -> None:
    """A FLUSH from uid 65534 asking with `fail` leaves what b records at `off` (so promote
    keeps its UID gap); only the operator's `sync_policy = "fail"` makes it `fail`, and a
    FLUSH asking with `degrade` can still weaken that."""
    with nodes() as (a, b, _base):
        change = a.roots["index"] / "u1" / "box" / "dovecot.index.log"
        write(change, b"x")
        a.barrier(timeout=20)
        run_as(NOBODY, "requests", str(a.control_socket),
               flush(1, "fail", "u1", str(change.parent), timeout_ms=2000))
        b_learns_a_again(a, b, change)
        assert recorded_policy(b) == "off"
        assert a.status()["sync_policy"] == {"configured": "off", "weakest_seen": "fail",
                                             "announced": "off"}

    with nodes(replication_a={"sync_policy": "fail"}) as (a, b, _base):
        change = a.roots["index"] / "u1" / "box" / "dovecot.index.log"
        write(change, b"x")
        a.barrier(timeout=20)
        assert recorded_policy(b) == "fail"
        run_as(NOBODY, "requests", str(a.control_socket),
               flush(1, "degrade", "u1", str(change.parent), timeout_ms=2000))
        b_learns_a_again(a, b, change)
        assert recorded_policy(b) == "degrade"
        assert a.status()["sync_policy"]["announced"] == "degrade"


def test_idle_connections_of_one_user_cannot_take_the_daemons_descriptors() -> None:
    """uid 65534 opens 1 100 connections and holds them: the daemon keeps at most its per-uid
    share (256 by default), says why to the others, another user's FLUSH is still answered
    and root's STATUS still works; the refusals are logged once, not 844 times."""
    with nodes() as (a, _b, _base):
        box = a.roots["index"] / "u1" / "box"
        write(box / "dovecot.index.log", b"x")
        a.barrier(timeout=20)
        before = fd_count(a)
        attacker = subprocess.Popen(
            ["/usr/bin/python3", "-c", ATTACKER, "hold", str(a.control_socket), "1100"],
            user=NOBODY, group=NOBODY, extra_groups=[], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True)
        try:
            assert attacker.stdout is not None
            answers = json.loads(attacker.stdout.readline() or "{}")
            assert answers == {"VERSION": 256, "FAIL": 844}, answers
            # Refused clients get a moment to read why (at most 64 at once): wait it out.
            poll(lambda: a.status()["control"]["lingering"] == 0, "refusals to be closed")
            held = fd_count(a)
            other = run_as(OTHER_UID, "requests", str(a.control_socket),
                           flush(1, "fail", "u1", str(box)))
            assert other["replies"][1] == "OK\t1\t1", other
            status = a.status()
            assert status["control"]["connections"] == 256
            assert status["control"]["refused"] >= 844
        finally:
            attacker.kill()
            attacker.wait(30)
        # 256 control connections, plus a few the daemon may open meanwhile for other reasons
        # (a link's socket, a replica's journal and space reserve): far below the 1 100 of old
        assert held - before <= 256 + 8, (before, held)
        assert a.log_text().count("control connection from uid 65534 refused") == 1


def test_a_silent_client_is_closed_after_the_idle_timeout() -> None:
    with nodes(replication_a={"control_idle_timeout": 1.0}) as (a, _b, _base):
        answer = run_as(NOBODY, "idle", str(a.control_socket))
        assert answer == {"version": VERSION, "then": ""}  # closed: the read saw end of file


def test_an_overlong_line_gets_a_clear_refusal_and_the_daemon_keeps_serving() -> None:
    with nodes() as (a, _b, _base):
        line = flush(1, "fail", "u1", "/" + "x" * (70 << 10))
        answer = run_as(NOBODY, "requests", str(a.control_socket), line, "--eof")
        assert answer["replies"][1].startswith("FAIL\t\tcontrol line longer than 65536 bytes"), \
            answer["replies"][1][:200]
        assert answer["then"] == ""
        box = a.roots["index"] / "u1" / "box"
        write(box / "dovecot.index.log", b"x")
        after = run_as(NOBODY, "requests", str(a.control_socket), flush(2, "fail", "u1", str(box)))
        assert after["replies"][1] == "OK\t2\t1"
        assert "Traceback" not in a.log_text() and "ValueError" not in a.log_text()


@pytest.fixture
def tiny_tmpfs() -> Iterator[Path]:
    """A 300 KiB tmpfs for b's replicas: a's 1 MiB file cannot fit, so b keeps refusing the
    directory holding it, and names it in its state."""
    where = Path(tempfile.mkdtemp(prefix="hostile-ram-"))
    with small_tmpfs(where, "300k"):
        yield where
    where.rmdir()


def test_status_shows_no_user_names_to_an_unprivileged_user(tiny_tmpfs: Path) -> None:
    with nodes(ram_b=tiny_tmpfs) as (a, b, _base):
        write(a.roots["index"] / "alice-private" / "box" / "dovecot.index", os.urandom(1 << 20))
        poll(lambda: b.status()["replicas"].get("a", {}).get("broken_dirs"),
             "b refusing alice's box")
        assert "alice-private" in json.dumps(b.status())  # root sees which directory
        for node in (b, a):  # b first: its replica state names alice's directory
            answer = run_as(NOBODY, "requests", str(node.control_socket), "STATUS\t7")
            reply = answer["replies"][1]
            assert reply.startswith("STATUS\t7\t"), reply[:200]
            assert "alice-private" not in reply
            shown = json.loads(reply.split("\t", 2)[2])
            assert shown["redacted"] is True and shown["counters"]
            assert shown["peers"][a.node_id if node is b else b.node_id]["state"]
        shown_b = json.loads(run_as(NOBODY, "requests", str(b.control_socket), "STATUS\t8")[
            "replies"][1].split("\t", 2)[2])
        assert shown_b["replicas"]["a"]["broken_dirs"] >= 1  # counted, not named


def test_a_malformed_request_gets_a_fail_saying_why_and_the_connection_goes_on() -> None:
    with nodes() as (a, _b, _base):
        answer = run_as(0, "requests", str(a.control_socket), "BARRIER\t7\t1²",
                        "FLUSH\tnot-a-number\t5\tfail\tu1\t/x", "NOSUCHVERB\t8", "STATUS\t9")
        barrier, flush_reply, unknown, status = answer["replies"][1:5]
        assert barrier.startswith("FAIL\t7\tmalformed request: BARRIER timeout_ms"), barrier
        assert flush_reply.startswith("FAIL\t\tmalformed request: FLUSH"), flush_reply
        assert unknown.startswith("FAIL\t8\tmalformed request: unknown control request"), unknown
        assert status.startswith("STATUS\t9\t"), status[:80]


def test_owner_requests_from_any_local_user_are_parsed_strictly_and_read_nothing() -> None:
    """OWNER (the plugin asks it at every login) is open to every local user: a malformed one
    gets a FAIL saying why and the connection goes on; a user name that is a path is only a
    dictionary key (without [coordination] the answer is OK, nothing is opened)."""
    with nodes() as (a, _b, _base):
        answer = run_as(NOBODY, "requests", str(a.control_socket), "OWNER\t10",
                        "OWNER\t11\t\x01z", "OWNER\t12\t../../etc\t", "OWNER\t13\t../../etc",
                        "OWNER\t14\tu1", "STATUS\t15")
        short, escape, extra, path, plain, status = answer["replies"][1:7]
        assert short.startswith("FAIL\t10\tmalformed request: unknown control request"), short
        assert escape.startswith("FAIL\t11\tmalformed request: bad escape"), escape
        assert extra.startswith("FAIL\t12\tmalformed request"), extra
        assert path == "OK\t13\t0" and plain == "OK\t14\t0", (path, plain)
        assert status.startswith("STATUS\t15\t"), status[:80]
