"""Peer authentication with a pre-shared key: an HMAC challenge-response in the HELLO exchange.

Sans-IO: these objects compute and check the handshake's nonces and proofs; the transport
helpers (replicator.transport.handshake) move them. The exchange, client = the dialling node:

    1. client -> HELLO(node, role, nonce=Nc)
    2. server -> AUTH(nonce=Ns)           only if `node` is a configured peer (else ERROR)
    3. client -> AUTH(proof=HMAC(K, transcript("client")))
    4. server -> HELLO(..., proof=HMAC(K, transcript("server")))   only once 3 checked out

`transcript(side)` binds, length-prefixed: a protocol label, the side, the client's node id,
the server's node id (as the client dialled it), the role, Nc and Ns. So a recorded proof never
verifies again (each side chose a fresh nonce: no replay), a proof sent back to the side that
made it fails (the side is bound: no reflection), and a proof for another pair of nodes or
another role stands for nothing else.

Why a separate AUTH step rather than a server nonce in a first server message: the client
still speaks first, as before, so an older peer meets a clear ERROR instead of both ends
waiting for the other; and the client proves itself before the server computes any MAC, so an
unauthenticated caller gets nothing from the server but a random nonce (no MAC oracle, and no
replica position, which the server HELLO carries). The cost is one round trip per connection.

Without a key (TLS alone authenticates, or a loopback-only test node) the same four messages
flow with empty proofs. A side that holds a key demands a valid proof from the other, so a
node with a key never talks to one without. What this does not give: secrecy or integrity of
the frames after the handshake (use [tls] for those against someone on the path), nor per-node
identity (every holder of the cluster key can claim any node id; certificates bind node ids).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field, replace

from replicator.errors import ProtocolError
from replicator.wire.messages import Auth, Hello

PROTOCOL_LABEL = b"dovecot-replicator peer auth v1"
NONCE_BYTES = 32
_HEX64 = re.compile(r"[0-9a-f]{64}")


class AuthError(ProtocolError):
    """The peer did not prove what it claims (key, certificate, node id)."""


def new_nonce() -> str:
    return secrets.token_hex(NONCE_BYTES)


def compute_proof(key: bytes, side: str, client: str, server: str, role: str,
                  client_nonce: str, server_nonce: str) -> str:
    """HMAC-SHA256 over the length-prefixed transcript (see the module docstring)."""
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for part in (PROTOCOL_LABEL, side, client, server, role, client_nonce, server_nonce):
        raw = part if isinstance(part, bytes) else part.encode("utf-8", "surrogatepass")
        mac.update(len(raw).to_bytes(4, "big") + raw)
    return mac.hexdigest()


def _check_hex(value: str, what: str) -> None:
    if not _HEX64.fullmatch(value):
        raise AuthError(f"{what} is not 64 hex digits")


def _proof_matches(expected: str, got: str, what: str) -> None:
    _check_hex(got, what)  # also makes compare_digest safe: it takes only ASCII strings
    if not hmac.compare_digest(expected, got):
        raise AuthError(f"{what} does not match: a different pre-shared key, or a different "
                        "pair of node ids than the peer assumed")


@dataclass
class ClientAuth:
    """The dialling side: `client` calls `server` (the id it expects there) in `role`."""

    key: bytes | None
    client: str
    server: str
    role: str
    nonce: str = field(default_factory=new_nonce)
    _server_nonce: str = ""

    def hello(self, hello: Hello) -> Hello:
        """`hello` with this connection's nonce."""
        return replace(hello, nonce=self.nonce)

    def answer(self, challenge: Auth) -> Auth:
        """The proof for the server's `challenge`."""
        _check_hex(challenge.nonce, f"{self.server}'s challenge")
        self._server_nonce = challenge.nonce
        if self.key is None:
            return Auth()
        return Auth(proof=self._proof("client"))

    def check_server(self, hello: Hello) -> None:
        """Raise AuthError unless the server's HELLO proves it is `server` holding the key."""
        if hello.node != self.server:
            raise AuthError(f"the peer says it is {hello.node!r}, configured as {self.server!r}")
        if self.key is None:
            return
        if not self._server_nonce:
            raise AuthError(f"{self.server} answered before the challenge", remote=False)
        if not hello.proof:
            raise AuthError(f"{self.server} did not prove it holds the pre-shared key (no "
                            "[auth] psk_file there?)")
        _proof_matches(self._proof("server"), hello.proof, f"{self.server}'s proof")

    def _proof(self, side: str) -> str:
        assert self.key is not None
        return compute_proof(self.key, side, self.client, self.server, self.role, self.nonce,
                             self._server_nonce)


@dataclass
class ServerAuth:
    """The listening side `server`, answering the client's HELLO `peer`."""

    key: bytes | None
    server: str
    peer: Hello
    nonce: str = field(default_factory=new_nonce)
    _verified: bool = False

    def challenge(self) -> Auth:
        """The AUTH to send after the client's HELLO (which must carry a nonce if we hold a key)."""
        if self.key is not None:
            if not self.peer.nonce:
                raise AuthError(f"{self.peer.node!r} sent no challenge: it does not authenticate "
                                "(no [auth] psk_file there, or an older version)")
            _check_hex(self.peer.nonce, f"{self.peer.node!r}'s nonce")
        return Auth(nonce=self.nonce)

    def check_client(self, answer: Auth) -> None:
        """Raise AuthError unless `answer` proves the client holds the key."""
        if self.key is not None:
            if not answer.proof:
                raise AuthError(f"{self.peer.node!r} did not prove it holds the pre-shared key")
            _proof_matches(self._proof("client"), answer.proof, f"{self.peer.node!r}'s proof")
        self._verified = True

    def sign(self, hello: Hello) -> Hello:
        """Our HELLO with our proof; only once the client's proof was checked."""
        if not self._verified:
            raise AuthError("HELLO before the client proved itself", remote=False)
        if self.key is None:
            return hello
        return replace(hello, proof=self._proof("server"))

    def _proof(self, side: str) -> str:
        assert self.key is not None
        return compute_proof(self.key, side, self.peer.node, self.server, self.peer.role,
                             self.peer.nonce, self.nonce)
