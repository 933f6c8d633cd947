"""A LinkHost with nothing behind it, for tests that drive a PeerLink on its own: node a, one
peer b, a 1 MiB outbox of stream s1."""

from __future__ import annotations

from replicator.sender.link import LinkHost
from replicator.sender.outbox import Outbox
from replicator.transport.handshake import Credentials


class StubLinkHost(LinkHost):
    def __init__(self) -> None:
        self.node_id, self.software, self.sync_policy = "a", "test", "off"
        self.outbox = Outbox("s1", 1, ["b"], retain_bytes=1 << 20, max_frame_bytes=1 << 20)
        self.max_frame_bytes, self.connect_timeout, self.ack_timeout = 1 << 20, 5.0, 5.0
        self.reconnect_max_delay = 0.05
        self.credentials = Credentials("a")
