"""PeerLink.kick: batches numbered while a link idles leave from the caller's stack, in order,
each once, also when the transport is busy and the link's task must send them instead."""

from __future__ import annotations

import asyncio

from replicator.config import PeerConfig
from replicator.config_values import Address
from replicator.delta.ops import Op, OpCode
from replicator.sender.batcher import Draft
from replicator.sender.link import PeerLink
from replicator.testing.linkhost import StubLinkHost
from replicator.wire.messages import Batch, Hello
from tests.unit.test_link_compression import opened


class Wire:
    """A transport that records what is written and can pretend to be backed up."""

    def __init__(self) -> None:
        self.properties: dict[str, object] = {"name": "test"}
        self.written: list[bytes] = []
        self.backed_up = False
        self.incoming: asyncio.Queue[bytes] = asyncio.Queue()

    def ready(self) -> bool:
        return not self.backed_up

    def send_nowait(self, data: bytes) -> None:
        self.written.append(data)

    async def send(self, data: bytes) -> None:
        self.written.append(data)

    async def recv(self) -> bytes:
        return await self.incoming.get()

    async def close(self) -> None:
        pass


def draft(n: int) -> Draft:
    return Draft("index", "u1", [Op(OpCode.WRITE, f"log{n}", data=b"x", raw_size=1)])


async def settle() -> None:
    """Let every task that can run, run (a few loop turns; nothing waits on time)."""
    for _ in range(20):
        await asyncio.sleep(0)


def test_kick_sends_at_once_in_order_and_each_batch_once() -> None:
    async def scenario() -> list[int]:
        host, wire = StubLinkHost(), Wire()
        link = PeerLink(host, PeerConfig("b", Address("127.0.0.1", 1)))
        client, server = opened(agreed=False)
        task = asyncio.create_task(link._stream(wire, client, Hello("b", "replica", "test",
                                                                     stream="s1", seq=0)))
        await settle()  # the link idles, waiting for batches
        host.outbox.add(draft(1))
        link.kick()
        assert len(wire.written) == 1, "sent from kick(), before any other task ran"
        wire.backed_up = True
        host.outbox.add(draft(2))
        host.outbox.add(draft(3))
        link.kick()
        assert len(wire.written) == 1, "a busy transport: left to the link's task"
        wire.backed_up = False
        await settle()
        host.outbox.add(draft(4))
        link.kick()
        await settle()
        task.cancel()
        seqs = [m.seq for data in wire.written for m in server.receive_data(data)
                if isinstance(m, Batch)]
        return seqs

    assert asyncio.run(scenario()) == [1, 2, 3, 4]
