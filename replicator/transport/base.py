"""The contract every transport keeps, so the session and the daemon never know which is used.

A transport moves bytes in order between two ends. `send` returns once the bytes are accepted
(backpressure: it waits while the peer is slow); `send_nowait` queues bytes without waiting,
for a caller that asked `ready()` (nothing queued ahead, the peer keeping up) and must not
yield to the event loop, as a sync commit's batches leaving at once; `recv` returns the next
bytes, b"" once the peer closed; `close` is idempotent. If a `send` or `recv` is cancelled
mid-way the transport is closed, never left half-used: the next call raises `TransportClosed`.
`properties` says what was negotiated (name, why it was chosen, peer address, TLS and its
version) for `status` and the logs, and `peer_names`: the names a verified peer certificate
carries (empty without TLS), which transport.handshake compares with the node id the peer
claims or was dialled as.
A transport authenticates nobody by itself: every connection goes through transport.handshake.
"""

from __future__ import annotations

from typing import Any, Protocol


class TransportClosed(ConnectionError):
    """The transport was closed (by us, by the peer, or by a cancelled call)."""


class Transport(Protocol):
    properties: dict[str, Any]

    async def send(self, data: bytes) -> None: ...

    def ready(self) -> bool: ...

    def send_nowait(self, data: bytes) -> None: ...

    async def recv(self) -> bytes: ...

    async def close(self) -> None: ...
