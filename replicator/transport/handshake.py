"""The authenticated opening of every replication connection, both ends, over any transport.

Every dialler (an origin's link, `verify`'s manifest request, `promote`'s liveness probe) calls
`dial`; the listener calls `accept`. Between them they run the four-message exchange of
wire.auth and, with TLS, bind the node id to the peer's certificate: the id a HELLO claims (or
the peer the dialler meant to reach) must be one of the certificate's names. So nothing outside
transport/ and wire/ knows how peers authenticate.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from typing import TypeVar

from replicator.config import Config, PeerConfig
from replicator.errors import ProtocolError, ReplicatorError
from replicator.transport import tcp
from replicator.transport.base import Transport, TransportClosed
from replicator.wire.auth import AuthError, ClientAuth, ServerAuth
from replicator.wire.messages import Auth, ErrorMessage, Hello, Message
from replicator.wire.session import Session

ROLES = ("origin", "verifier")
M = TypeVar("M", bound=Message)


class PeerRefused(ProtocolError):
    """The peer answered our handshake with ERROR (`code` says why, for programs)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class Refusal(ReplicatorError):
    """The listener refuses this connection: send ERROR(`code`, message), log, close."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Credentials:
    """What this node proves itself with: its id, the pre-shared key, its TLS contexts."""

    node_id: str
    psk: bytes | None = None
    client_tls: ssl.SSLContext | None = None
    server_tls: ssl.SSLContext | None = None

    @classmethod
    def from_config(cls, config: Config, *, server: bool = False) -> Credentials:
        tls = config.tls
        files = (tls.cert, tls.key, tls.ca) if tls else None
        return cls(config.node_id, config.auth.psk,
                   tcp.client_tls(*files) if files else None,
                   tcp.server_tls(*files) if files and server else None)


@dataclass
class Dialled:
    """An open, authenticated connection: use `session` on `transport`; `hello` is the peer's."""

    transport: Transport
    session: Session
    hello: Hello


async def dial(peer: PeerConfig, credentials: Credentials, hello: Hello, *, timeout: float,
               max_frame_bytes: int, reason: str = "configured") -> Dialled:
    """Connect to `peer`, prove ourselves and check it is `peer`; raises PeerRefused, AuthError,
    ProtocolError, TransportClosed, OSError or TimeoutError (nothing is left open then)."""
    transport = await tcp.connect(peer.address, credentials.client_tls, timeout, reason=reason)
    session = Session("client", max_frame_bytes=max_frame_bytes)
    try:
        async with asyncio.timeout(timeout):
            return Dialled(transport, session,
                           await _client_exchange(transport, session, peer, credentials, hello))
    except BaseException:
        await transport.close()
        raise


async def _client_exchange(transport: Transport, session: Session, peer: PeerConfig,
                           credentials: Credentials, hello: Hello) -> Hello:
    if credentials.client_tls is not None:
        _check_certificate(transport, peer.id, f"{peer.address}'s certificate")
    auth = ClientAuth(credentials.psk, credentials.node_id, peer.id, hello.role)
    await transport.send(session.send(auth.hello(hello)))
    challenge = await _expect(transport, session, Auth, peer.id)
    await transport.send(session.send(auth.answer(challenge)))
    reply = await _expect(transport, session, Hello, peer.id)
    auth.check_server(reply)
    return reply


@dataclass
class Accepted:
    """A peer that proved itself: its HELLO, and `auth.sign(our_hello)` to answer it."""

    hello: Hello
    auth: ServerAuth


async def accept(transport: Transport, session: Session, config: Config,
                 credentials: Credentials) -> Accepted:
    """The listener's half: the client's HELLO, who it may be, the challenge and its proof.
    Raises Refusal (nothing was revealed: send ERROR and close), or what `dial` raises."""
    hello = await _expect(transport, session, Hello, "the peer")
    if config.peer(hello.node) is None:
        raise Refusal("unknown-peer",
                      f"node {hello.node!r} is not a configured peer of {config.node_id}")
    if hello.role not in ROLES:
        raise Refusal("bad-role", f"unknown role {hello.role!r}")
    if credentials.server_tls is not None:
        try:
            _check_certificate(transport, hello.node, "the client certificate")
        except AuthError as exc:
            raise Refusal("identity", str(exc)) from None
    auth = ServerAuth(credentials.psk, credentials.node_id, hello)
    try:
        await transport.send(session.send(auth.challenge()))
        auth.check_client(await _expect(transport, session, Auth, hello.node))
    except AuthError as exc:
        raise Refusal("auth", f"authentication of {hello.node!r} failed: {exc}") from None
    return Accepted(hello, auth)


def _check_certificate(transport: Transport, node_id: str, what: str) -> None:
    names = transport.properties.get("peer_names") or []
    if node_id not in names:
        raise AuthError(f"{what} names {', '.join(map(repr, names)) or 'nobody'}, "
                        f"not node {node_id!r}")


async def _expect(transport: Transport, session: Session, kind: type[M], peer: str) -> M:
    """The next message, which must be the only one and of type `kind` (or ERROR: raised)."""
    messages: list[Message] = []
    while not messages:
        data = await transport.recv()
        if not data:
            raise TransportClosed(f"{peer} closed the connection during the handshake")
        messages = session.receive_data(data)
    message = messages[0]
    if isinstance(message, ErrorMessage):
        raise PeerRefused(f"refused by {peer}: {message.message} ({message.code})", message.code)
    if len(messages) > 1 or not isinstance(message, kind):
        raise ProtocolError(f"{peer} sent {', '.join(type(m).__name__ for m in messages)} "
                            f"during the handshake, expected {kind.__name__}")
    return message
