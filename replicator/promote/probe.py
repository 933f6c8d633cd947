"""Is the origin still alive on its replication link? A promote must not take over a node
that still answers (two writers for one user is the split brain the fence exists to stop)."""

from __future__ import annotations

import asyncio

from replicator import __version__
from replicator.config import Config
from replicator.errors import ProtocolError
from replicator.transport import tcp
from replicator.transport.base import TransportClosed
from replicator.wire.messages import ErrorMessage, Hello
from replicator.wire.session import Session

PROBE_TIMEOUT = 2.0


async def _probe(config: Config, origin: str) -> str | None:
    peer = config.peer(origin)
    assert peer is not None
    tls = tcp.client_tls(config.tls.cert, config.tls.key, config.tls.ca) if config.tls else None
    try:
        transport = await tcp.connect(peer.address, tls, PROBE_TIMEOUT)
    except (OSError, TimeoutError):
        return None
    session = Session("client")
    try:
        await transport.send(session.send(Hello(config.node_id, "verifier",
                                                f"dovecot-replicator/{__version__}")))
        async with asyncio.timeout(PROBE_TIMEOUT):
            data = await transport.recv()
        for message in session.receive_data(data) if data else []:
            if isinstance(message, Hello):
                return f"node {message.node} ({message.software}) answers at {peer.address}"
            if isinstance(message, ErrorMessage):
                return f"a daemon answers at {peer.address}: {message.message}"
        return None
    except (OSError, TimeoutError, ProtocolError, TransportClosed):
        return None
    finally:
        await transport.close()


def origin_answers(config: Config, origin: str) -> str | None:
    """A description of who answers on `origin`'s replication address, or None."""
    return asyncio.run(_probe(config, origin))
