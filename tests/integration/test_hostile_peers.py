"""Hostile peers against real daemons over real sockets (issue 13, findings 2, 7 and 10).

An attacker who reaches the replication port speaks frames by hand (`attempt`): it claims to
be origin `a` to plant a file, or asks as a "verifier" for the manifest; impostors with the
wrong key or another node's CA-signed certificate run as real daemons; certificates come from a
real test CA (testing.certs). Every test here failed on the code before peer authentication.
Timeouts in these tests are safety bounds many times the configured ones, never what is
asserted on.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from replicator.config import PeerConfig
from replicator.config_values import Address
from replicator.delta.ops import Meta, Op, OpCode, Result, encode_ops
from replicator.dovecot.instance import free_port
from replicator.hashing import digest, frame_checksum
from replicator.sender.link import PeerLink
from replicator.testing.certs import TestCA
from replicator.testing.cluster import PeerSpec, ReplicatorNode, pair
from replicator.testing.linkhost import StubLinkHost
from replicator.transport import tcp
from replicator.verify.trees import compare_trees
from replicator.wire.frames import MAGIC, PREFIX, VERSION, FrameDecoder, FrameType, encode_frame
from replicator.wire.messages import (
    Ack,
    Auth,
    Batch,
    ErrorMessage,
    Hello,
    Manifest,
    ManifestRequest,
    Message,
    Resync,
    decode_message,
)
from tests.integration.daemon_support import poll, roots

pytestmark = pytest.mark.integration
SAFETY = 20.0  # seconds: a bound for socket reads, far above every configured timeout here


def tree(path: Path) -> dict[str, bytes]:
    """Every file under `path` with its content (what an attacker could have changed)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file()} if path.exists() else {}


# -- a hand-made client: frames only, no credentials -------------------------------------------

def start_with_a_change(nodes: list[ReplicatorNode], a: ReplicatorNode,
                        b: ReplicatorNode) -> None:
    """Start b, then a, and give a one change to replicate to b (or to be refused)."""
    nodes += [a, b]
    b.start()
    a.start()
    (a.roots["index"] / "u1").mkdir()
    (a.roots["index"] / "u1" / "dovecot.index.log").write_bytes(b"record")


def _read_messages(sock: socket.socket, decoder: FrameDecoder) -> list[Message]:
    """The next messages, [] once the server closed (or reset) the connection."""
    while True:
        try:
            data = sock.recv(1 << 16)
        except ConnectionResetError:
            return []
        if not data:
            return []
        frames = decoder.feed(data)
        if frames:
            return [decode_message(frame) for frame in frames]


def attempt(port: int, hello: Hello, then: list[Message], *, source: str = "127.0.0.1"
            ) -> list[Message]:
    """Claim `hello`, and if the server trusts it (answers HELLO) send `then`; if it asks for a
    proof, guess one. Returns every message the server sent until it closed or answered."""
    received: list[Message] = []
    decoder = FrameDecoder()
    with socket.create_connection(("127.0.0.1", port), timeout=SAFETY,
                                  source_address=(source, 0)) as sock:
        sock.sendall(encode_frame(hello.to_frame()))
        while messages := _read_messages(sock, decoder):
            received += messages
            last = messages[-1]
            if isinstance(last, Hello):
                sock.sendall(b"".join(encode_frame(m.to_frame()) for m in then))
            elif isinstance(last, Auth):
                sock.sendall(encode_frame(Auth(proof="0" * 64).to_frame()))
            if isinstance(last, ErrorMessage | Ack | Manifest):
                break
    return received


def planting(stream: str = "evil") -> list[Message]:
    """What an origin sends to make a replica hold `u1/planted` (a valid batch)."""
    body = b"planted by an attacker"
    meta = Meta(0o600, 0, 0, 1_700_000_000_000_000_000)
    ops = [Op(OpCode.ENSURE_DIR, "u1", meta=Meta(0o700, 0, 0, 0)),
           Op(OpCode.REPLACE, "u1/planted", data=body, raw_size=len(body),
              result=Result(len(body), digest(body)), meta=meta)]
    return [Resync(stream, 1), Batch(1, stream, 1, "index", "u1", payload=encode_ops(ops))]


def b_expecting_a(tmp_path: Path, **options: Any) -> ReplicatorNode:
    return ReplicatorNode(tmp_path / "b", "b", roots(tmp_path / "b-roots"),
                          peers=[PeerSpec("a", free_port())], **options)


# -- (a) no credentials, (b) a wrong key ---------------------------------------------------------

def test_a_client_without_the_key_cannot_plant_a_batch(tmp_path: Path,
                                                       nodes: list[ReplicatorNode]) -> None:
    b = b_expecting_a(tmp_path)
    nodes.append(b)
    b.start()
    before = tree(b.replica_dir)
    for _ in range(3):
        replies = attempt(b.port, Hello("a", "origin", "x", 1, "evil"), planting())
        assert [type(m) for m in replies][-1] is ErrorMessage, replies
        assert not any(isinstance(m, Ack) for m in replies)
    assert tree(b.replica_dir) == before, "nothing planted, the digest journal unchanged"
    assert not (b.replica_of("a", "index") / "u1" / "planted").exists()
    log = b.log_text()
    refusals = [line for line in log.splitlines() if "refusing replication connection" in line]
    assert len(refusals) == 1 and "'a' sent no challenge" in refusals[0], \
        "logged, once per address and reason"


def test_a_daemon_with_a_wrong_key_is_refused(tmp_path: Path,
                                              nodes: list[ReplicatorNode]) -> None:
    a, b = pair(tmp_path, roots(tmp_path / "a-roots"), roots(tmp_path / "b-roots"))
    a.psk = b"wrong-key-" * 4
    start_with_a_change(nodes, a, b)
    poll(lambda: "authentication of 'a' failed" in a.status()["peers"]["b"]["last_error"],
         "a's refusal")
    assert not b.replica_of("a", "index").exists()
    assert "'a''s proof does not match" in b.log_text()


def test_a_node_without_credentials_warns_that_local_users_can_pose_as_peers(
        tmp_path: Path, nodes: list[ReplicatorNode]) -> None:
    """Allowed on loopback only (config refuses it elsewhere), and said in one line."""
    b = b_expecting_a(tmp_path, psk=None)
    nodes.append(b)
    b.start()
    assert "any local user can connect to 127.0.0.1:" in b.log_text()
    replies = attempt(b.port, Hello("a", "verifier", "x"), [ManifestRequest(1)])
    assert isinstance(replies[-1], Manifest), "as documented: no credentials, no protection"


# -- (c) certificates bound to node ids ----------------------------------------------------------

def tls_pair(tmp_path: Path, cert_a: str, cert_b: str,
             **options: Any) -> tuple[ReplicatorNode, ReplicatorNode]:
    ca = TestCA(tmp_path / "pki")
    a, b = pair(tmp_path, roots(tmp_path / "a-roots"), roots(tmp_path / "b-roots"), **options)
    a.tls, b.tls = ca.issue(cert_a), ca.issue(cert_b)
    return a, b


def test_node_cs_certificate_cannot_claim_to_be_a(tmp_path: Path,
                                                  nodes: list[ReplicatorNode]) -> None:
    """c holds a certificate of the cluster's CA and (here) even the cluster's key; it runs as
    `a`. The listener compares the HELLO's node id with the certificate: refused."""
    a, b = tls_pair(tmp_path, "c", "b")
    start_with_a_change(nodes, a, b)
    poll(lambda: "(identity)" in a.status()["peers"]["b"]["last_error"], "the refusal")
    assert "the client certificate names 'c', not node 'a'" in b.log_text()
    assert not b.replica_of("a", "index").exists()


def test_a_server_whose_certificate_names_another_node_is_refused_by_the_dialer(
        tmp_path: Path, nodes: list[ReplicatorNode]) -> None:
    a, b = tls_pair(tmp_path, "a", "c")
    start_with_a_change(nodes, a, b)
    poll(lambda: "certificate names 'c', not node 'b'" in
         a.status()["peers"]["b"]["last_error"], "a's refusal of b")
    assert not b.replica_of("a", "index").exists()


def test_certificates_naming_their_node_replicate(tmp_path: Path,
                                                  nodes: list[ReplicatorNode]) -> None:
    """The control: the same set-up with the right certificates (and no PSK: TLS suffices)."""
    a, b = tls_pair(tmp_path, "a", "b", psk=None)
    start_with_a_change(nodes, a, b)
    a.barrier()
    assert compare_trees(a.roots["index"], b.replica_of("a", "index")).consistent
    assert a.status()["peers"]["b"]["transport"]["peer_names"] == ["b"]


# -- (d) the verifier role ------------------------------------------------------------------------

@pytest.mark.parametrize("claimed", ["z", "a"])
def test_the_manifest_is_only_for_authenticated_peers(tmp_path: Path, claimed: str,
                                                      nodes: list[ReplicatorNode]) -> None:
    """`z` is no peer: refused before anything else; `a` is one, but this caller cannot prove
    it. Neither learns the user names in b's manifest."""
    b = b_expecting_a(tmp_path)
    (b.roots["index"] / "secret-user").mkdir()
    (b.roots["index"] / "secret-user" / "dovecot.index.log").write_bytes(b"x")
    nodes.append(b)
    b.start()
    replies = attempt(b.port, Hello(claimed, "verifier", "x"), [ManifestRequest(1)])
    assert not any(isinstance(m, Manifest) for m in replies), replies
    assert isinstance(replies[-1], ErrorMessage)
    if claimed == "z":
        assert replies == [ErrorMessage("unknown-peer", "node 'z' is not a configured peer of b")]


# -- (e) caps and the handshake deadline ----------------------------------------------------------

def _closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_the_cap_holds_and_a_peer_is_served_meanwhile(tmp_path: Path,
                                                      nodes: list[ReplicatorNode]) -> None:
    """An attacker on 127.0.0.2 holds its 3 allowed handshakes open (the deadline is far
    away); its 4th connection is closed at once, and a's link from 127.0.0.1 still works."""
    a, b = pair(tmp_path, roots(tmp_path / "a-roots"), roots(tmp_path / "b-roots"),
                auth={"hello_timeout": 600, "max_unauthenticated_per_address": 3})
    nodes += [a, b]
    b.start()
    held = [socket.create_connection(("127.0.0.1", b.port), timeout=SAFETY,
                                     source_address=("127.0.0.2", 0)) for _ in range(3)]
    try:
        with socket.create_connection(("127.0.0.1", b.port), timeout=SAFETY,
                                      source_address=("127.0.0.2", 0)) as extra:
            assert _closed_by_server(extra), "the connection over the cap is closed at once"
        assert "3 connections from this address still in their handshake" in b.log_text()
        a.start()
        (a.roots["index"] / "u1").mkdir()
        (a.roots["index"] / "u1" / "dovecot.index.log").write_bytes(b"record")
        a.barrier()
        assert compare_trees(a.roots["index"], b.replica_of("a", "index")).consistent
    finally:
        for sock in held:
            sock.close()


def test_idle_connections_are_closed_before_and_after_tls(tmp_path: Path,
                                                          nodes: list[ReplicatorNode]) -> None:
    """hello_timeout = 1 s: a caller that never starts TLS, and one that finishes TLS with a
    valid certificate but never sends HELLO, are both closed (within the 20 s bound)."""
    ca = TestCA(tmp_path / "pki")
    b = b_expecting_a(tmp_path, tls=ca.issue("b"), auth={"hello_timeout": 1})
    nodes.append(b)
    b.start()
    with socket.create_connection(("127.0.0.1", b.port), timeout=SAFETY) as idle:
        assert _closed_by_server(idle)
    files = ca.issue("a")
    context = tcp.client_tls(files["cert"], files["key"], files["ca"])
    with socket.create_connection(("127.0.0.1", b.port), timeout=SAFETY) as raw, \
            context.wrap_socket(raw) as silent, contextlib.suppress(ssl.SSLError):
        assert silent.recv(1) == b""
    log = b.log_text()
    assert "no TLS handshake within 1 s" in log and "no authenticated HELLO within 1 s" in log


# -- (f) TLS below 1.2 ----------------------------------------------------------------------------

def _old_tls_client(files: Mapping[str, Path], newest: ssl.TLSVersion) -> ssl.SSLContext:
    """A client that offers TLS up to `newest`, with every security level restriction off,
    so that only the server's own version floor can refuse it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with pytest.warns(DeprecationWarning):
        context.minimum_version = ssl.TLSVersion.TLSv1
    context.maximum_version = newest
    context.load_cert_chain(str(files["cert"]), str(files["key"]))
    return context


def test_tls_below_1_2_is_refused_for_its_version(tmp_path: Path,
                                                  nodes: list[ReplicatorNode]) -> None:
    """The listener's context sets TLS 1.2 as its floor in code; the dialler's does too."""
    ca = TestCA(tmp_path / "pki")
    b = b_expecting_a(tmp_path, tls=ca.issue("b"))
    nodes.append(b)
    b.start()
    files = ca.issue("a")
    with pytest.warns(DeprecationWarning):
        old = _old_tls_client(files, ssl.TLSVersion.TLSv1_1)
    with socket.create_connection(("127.0.0.1", b.port), timeout=SAFETY) as raw, \
            pytest.raises((ssl.SSLError, ConnectionError)):
        old.wrap_socket(raw)
    with socket.create_connection(("127.0.0.1", b.port), timeout=SAFETY) as raw, \
            _old_tls_client(files, ssl.TLSVersion.TLSv1_2).wrap_socket(raw) as modern:
        assert modern.version() == "TLSv1.2", "the same client gets in with TLS 1.2"
    assert "TLS failed: UNSUPPORTED_PROTOCOL" in b.log_text(), "refused for its version (not, \
as the host's OpenSSL defaults did before, for want of a signature algorithm)"
    dialler = tcp.client_tls(files["cert"], files["key"], files["ca"])
    assert dialler.minimum_version == ssl.TLSVersion.TLSv1_2


# -- (g) the link and the listener survive the unexpected ----------------------------------------

def nested_json_frame(depth: int = 100_000) -> bytes:
    """A well-formed, checksummed HELLO frame whose header is JSON nested `depth` deep."""
    header = b"[" * depth + b"]" * depth
    prefix = PREFIX.pack(MAGIC, VERSION, FrameType.HELLO, 0, len(header), 0, 0)
    checksum = frame_checksum(prefix[:-8], header, b"")
    return prefix[:-8] + checksum.to_bytes(8, "little") + header


class GarbagePeer:
    """A TCP server that answers every connection with `reply` and then holds it open."""

    def __init__(self, reply: bytes) -> None:
        self.reply, self.connections = reply, 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                self.connections += 1
                self.held.append(conn)
                with contextlib.suppress(OSError):
                    conn.recv(1 << 16)
                    conn.sendall(self.reply)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def test_a_link_fed_garbage_reconnects_and_reports_it(tmp_path: Path,
                                                      nodes: list[ReplicatorNode]) -> None:
    peer = GarbagePeer(nested_json_frame())
    try:
        a = ReplicatorNode(tmp_path / "a", "a", roots(tmp_path / "a-roots"),
                           peers=[PeerSpec("b", peer.port)])
        nodes.append(a)
        a.start()
        poll(lambda: peer.connections >= 3, "the link to reconnect after the garbage")
        assert a.status()["peers"]["b"]["last_error"]
        assert "Task exception was never retrieved" not in a.log_text()
    finally:
        peer.close()


def test_the_listener_closes_a_connection_that_fails_and_carries_on(
        tmp_path: Path, nodes: list[ReplicatorNode]) -> None:
    a, b = pair(tmp_path, roots(tmp_path / "a-roots"), roots(tmp_path / "b-roots"))
    nodes += [a, b]
    b.start()
    with socket.create_connection(("127.0.0.1", b.port), timeout=SAFETY) as sock:
        sock.sendall(nested_json_frame())
        assert _closed_by_server(sock)
    assert "refusing replication connection from 127.0.0.1" in b.log_text(), \
        "the failure is the listener's to log (before: a task exception no one retrieved)"
    a.start()
    (a.roots["index"] / "u1").mkdir()
    (a.roots["index"] / "u1" / "dovecot.index.log").write_bytes(b"record")
    a.barrier()


class FailingHost(StubLinkHost):
    """A daemon whose manifest comparison has a bug: it raises what no one expects."""

    def diff_manifest(self, payload: bytes) -> dict[Any, Any]:
        raise RuntimeError("a bug in the manifest comparison")


async def _fake_replica(connections: list[int], reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:
    """A replica that authenticates (no key) and answers every manifest request."""
    from replicator.wire.auth import ServerAuth
    from replicator.wire.session import Session

    connections.append(1)
    session = Session("server")
    messages: list[Message] = []
    auth: ServerAuth | None = None
    while data := await reader.read(1 << 16):
        for message in session.receive_data(data):
            messages.append(message)
            if isinstance(message, Hello):
                auth = ServerAuth(None, "b", message)
                writer.write(session.send(auth.challenge()))
            elif isinstance(message, Auth) and auth is not None:
                auth.check_client(message)
                writer.write(session.send(auth.sign(Hello("b", "replica", "test"))))
            elif isinstance(message, ManifestRequest):
                writer.write(session.send(Manifest(message.id, 0)))
    writer.close()


def test_a_bug_in_the_link_is_logged_and_the_link_reconnects(
        caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> PeerLink:
        connections: list[int] = []
        server = await asyncio.start_server(
            lambda r, w: _fake_replica(connections, r, w), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        link = PeerLink(FailingHost(), PeerConfig("b", Address("127.0.0.1", port), "tcp"))
        task = asyncio.create_task(link.run())
        async with asyncio.timeout(SAFETY):
            while len(connections) < 3:
                await asyncio.sleep(0.01)
        task.cancel()
        server.close()
        return link

    link = asyncio.run(scenario())
    assert link.last_error == "unexpected RuntimeError: a bug in the manifest comparison"
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1, "the traceback once, not per reconnect"
