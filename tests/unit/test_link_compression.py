"""Link compression (wire.packed): the origin's frames as one zstd stream per connection, which
the replica decodes within its limits whatever a peer sends."""

from __future__ import annotations

import random
import tracemalloc

import pytest
import zstandard

from replicator.errors import ProtocolError
from replicator.wire.frames import Frame, FrameDecoder, FrameType, encode_frame
from replicator.wire.messages import Ack, Auth, Batch, Hello, Ping
from replicator.wire.packed import MAX_WINDOW, Packer
from replicator.wire.session import Session, State

MiB = 1 << 20


def opened(*, agreed: bool = True, max_frame_bytes: int = 64 * MiB) -> tuple[Session, Session]:
    client = Session("client", max_frame_bytes=max_frame_bytes)
    server = Session("server", max_frame_bytes=max_frame_bytes)
    server.receive_data(client.send(Hello("a", "origin", "test", 1, "s1")))
    client.receive_data(server.send(Auth(nonce="n")))
    server.receive_data(client.send(Auth(proof="p")))
    if agreed:
        server.agree_packing()
    client.receive_data(server.send(Hello("b", "replica", "test")))
    if agreed:
        client.agree_packing()
    assert client.state is State.OPEN and server.state is State.OPEN
    return client, server


def batch(seq: int, payload: bytes = b"log record " * 20) -> Batch:
    return Batch(1, "s1", seq, "index", "u1/mailboxes/INBOX", payload=payload)


def packed(payload: bytes) -> bytes:
    return encode_frame(Frame(FrameType.PACKED, {}, payload))


def test_frames_arrive_in_order_and_later_sends_cost_less() -> None:
    client, server = opened()
    sizes = []
    for seq in range(1, 21):
        frames = [client.send(batch(seq)), client.send(Ping(seq))]
        data = client.pack(frames, MiB)
        sizes.append(len(data))
        assert server.receive_data(data) == [batch(seq), Ping(seq)]
    plain = len(client.send(batch(21))) + len(client.send(Ping(21)))
    assert sizes[-1] * 3 < plain, (sizes, plain)  # the stream remembers earlier sends
    assert sizes[-1] < sizes[0]


def test_packed_frames_split_byte_by_byte_arrive_whole() -> None:
    client, server = opened()
    data = client.pack([client.send(batch(1)), client.send(batch(2))], MiB)
    got = [m for byte in data for m in server.receive_data(bytes([byte]))]
    assert got == [batch(1), batch(2)]


def test_a_large_send_arrives_whole() -> None:
    """A resync's send is megabytes: every frame of it decodes from its own PACKED frame."""
    client, server = opened()
    rng = random.Random(7)
    batches = [batch(seq, rng.randbytes(64) + b"index block " * 2000) for seq in range(1, 201)]
    data = client.pack([client.send(b) for b in batches], 32 * MiB)
    assert sum(len(b.payload) for b in batches) > 4 * MiB > 10 * len(data)
    assert server.receive_data(data) == batches


def test_a_send_is_split_where_the_peer_limit_says() -> None:
    client, server = opened()
    frames = [client.send(batch(seq, bytes([seq]) * 3000)) for seq in range(1, 6)]
    data = client.pack(frames, 7000)  # two frames at most in each PACKED frame
    assert server.receive_data(data) == [batch(seq, bytes([seq]) * 3000) for seq in range(1, 6)]
    outer = FrameDecoder().feed(data)
    assert [f.type for f in outer] == [FrameType.PACKED] * 3


def test_a_replica_that_did_not_agree_refuses_packed_frames() -> None:
    client, server = opened(agreed=False)
    client.agree_packing()  # a client that packs anyway
    with pytest.raises(ProtocolError, match="without agreeing") as info:
        server.receive_data(client.pack([client.send(batch(1))], MiB))
    assert info.value.remote is True
    assert server.state is State.CLOSED


def test_a_client_cannot_pack_without_agreeing() -> None:
    client, _ = opened(agreed=False)
    with pytest.raises(ProtocolError, match="without agreeing"):
        client.pack([client.send(batch(1))], MiB)


def test_the_origin_refuses_packed_frames_from_its_replica() -> None:
    client, server = opened()
    with pytest.raises(ProtocolError, match="without agreeing"):
        client.receive_data(packed(Packer().pack(server.send(Ack(1)))))


def test_a_small_frame_expanding_past_the_limit_is_refused_without_holding_it() -> None:
    _, server = opened(max_frame_bytes=MiB)
    bomb = Packer().pack(b"\0" * (256 * MiB))  # a few KB on the wire
    assert len(bomb) < 64 << 10
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError, match=f"more than {MiB} bytes") as info:
            server.receive_data(packed(bomb))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.remote is True
    assert peak < 8 * MiB, peak


def test_a_window_beyond_the_cap_is_refused_before_it_is_allocated() -> None:
    _, server = opened()
    params = zstandard.ZstdCompressionParameters.from_level(1, window_log=27)
    stream = zstandard.ZstdCompressor(compression_params=params).compressobj()
    payload = stream.compress(b"x" * 1000) + stream.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    assert MAX_WINDOW < 1 << 27
    with pytest.raises(ProtocolError, match="bad packed frame"):
        server.receive_data(packed(payload))


def test_garbage_in_a_packed_frame_is_the_peers_fault() -> None:
    _, server = opened()
    with pytest.raises(ProtocolError, match="bad packed frame") as info:
        server.receive_data(packed(b"this is not zstd"))
    assert info.value.remote is True


def test_a_packed_frame_must_end_at_a_frame_boundary() -> None:
    client, server = opened()
    whole = client.send(batch(1))
    with pytest.raises(ProtocolError, match="ends inside a frame"):
        server.receive_data(packed(Packer().pack(whole[:-3])))


def test_packed_frames_do_not_nest() -> None:
    client, server = opened()
    inner = packed(Packer().pack(client.send(batch(1))))
    with pytest.raises(ProtocolError, match="inside a PACKED frame"):
        server.receive_data(packed(Packer().pack(inner)))


def test_frames_inside_obey_the_session_rules() -> None:
    client, server = opened()
    ack = encode_frame(Ack(1).to_frame())  # a replica's message, from the origin
    with pytest.raises(ProtocolError, match="peer recv ACK"):
        server.receive_data(client.pack([ack], MiB))


@pytest.mark.parametrize("features", ["zstd-stream", [1], [["zstd-stream"]], {"a": 1}])
def test_a_hello_with_malformed_features_is_the_peers_fault(features: object) -> None:
    frame = Hello("a", "origin", "test", 1, "s1").to_frame()
    hostile = encode_frame(Frame(FrameType.HELLO, {**frame.header, "features": features}))
    server = Session("server")
    with pytest.raises(ProtocolError, match="features") as info:
        server.receive_data(hostile)
    assert info.value.remote is True
    assert server.state is State.CLOSED
