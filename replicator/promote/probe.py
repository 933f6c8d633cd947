"""Is the origin still alive on its replication link? A promote must not take over a node
that still answers (two writers for one user is the split brain the fence exists to stop)."""

from __future__ import annotations

import asyncio

from replicator import __version__
from replicator.config import Config
from replicator.errors import ProtocolError
from replicator.transport.base import TransportClosed
from replicator.transport.handshake import Credentials, PeerRefused, dial
from replicator.wire.auth import AuthError
from replicator.wire.messages import Hello

PROBE_TIMEOUT = 2.0


async def _probe(config: Config, origin: str) -> str | None:
    """Who answers on `origin`'s address. Anything that speaks our protocol counts, even if it
    refuses us or cannot prove it is `origin`: promote must not take over on a guess."""
    peer = config.peer(origin)
    assert peer is not None
    hello = Hello(config.node_id, "verifier", f"dovecot-replicator/{__version__}")
    try:
        dialled = await dial(peer, Credentials.from_config(config), hello,
                             timeout=PROBE_TIMEOUT, max_frame_bytes=config.tuning.max_frame_bytes)
    except PeerRefused as exc:
        return f"a daemon answers at {peer.address}: {exc}"
    except AuthError as exc:
        return f"something answers at {peer.address} but is not {origin}: {exc}"
    except (OSError, TimeoutError, ProtocolError, TransportClosed):
        return None
    await dialled.transport.close()
    reply = dialled.hello
    return f"node {reply.node} ({reply.software}) answers at {peer.address}"


def origin_answers(config: Config, origin: str) -> str | None:
    """A description of who answers on `origin`'s replication address, or None."""
    return asyncio.run(_probe(config, origin))
