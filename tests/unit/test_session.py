"""The sans-IO session: who may say what when, and who broke the protocol."""

from __future__ import annotations

import pytest

from replicator.errors import ProtocolError
from replicator.wire.messages import Ack, Auth, Batch, ErrorMessage, Hello, Ping
from replicator.wire.session import HANDSHAKE_MAX_FRAME_BYTES, Session, State


def hello(role: str = "origin") -> Hello:
    return Hello(node="a", role=role, software="test", epoch=1, stream="s1")


def opened() -> tuple[Session, Session]:
    client, server = Session("client"), Session("server")
    assert server.receive_data(client.send(hello())) == [hello()]
    assert server.state is State.HELLO_RECEIVED
    assert client.receive_data(server.send(Auth(nonce="n"))) == [Auth(nonce="n")]
    assert (client.state, server.state) == (State.CHALLENGED, State.CHALLENGE_SENT)
    assert server.receive_data(client.send(Auth(proof="p"))) == [Auth(proof="p")]
    assert (client.state, server.state) == (State.PROOF_SENT, State.PROOF_RECEIVED)
    reply = Hello(node="b", role="replica", software="test")
    assert client.receive_data(server.send(reply)) == [reply]
    assert client.state is State.OPEN and server.state is State.OPEN
    assert client.peer_hello == reply and server.peer_hello == hello()
    return client, server


def test_handshake_then_batches_and_acks() -> None:
    client, server = opened()
    batch = Batch(1, "s1", 1, "index", "u1", payload=b"ops")
    assert server.receive_data(client.send(batch)) == [batch]
    assert client.receive_data(server.send(Ack(1))) == [Ack(1)]


def test_messages_split_byte_by_byte_arrive_whole() -> None:
    client, server = opened()
    data = client.send(Batch(1, "s1", 1, "index", "", payload=b"x" * 300)) + client.send(Ping(5))
    got = [m for byte in data for m in server.receive_data(bytes([byte]))]
    assert [type(m) for m in got] == [Batch, Ping]


def test_client_may_not_send_a_batch_before_hello() -> None:
    with pytest.raises(ProtocolError, match="we send BATCH in state idle") as info:
        Session("client").send(Batch(1, "s", 1, "index", ""))
    assert info.value.remote is False


def test_server_refuses_a_batch_before_hello_as_the_peers_fault() -> None:
    client, _server = opened()
    with pytest.raises(ProtocolError, match="peer recv BATCH in state idle") as info:
        Session("server").receive_data(client.send(Batch(1, "s", 1, "index", "")))
    assert info.value.remote is True


def test_replica_may_not_send_batches() -> None:
    _, server = opened()
    with pytest.raises(ProtocolError, match="we send BATCH"):
        server.send(Batch(1, "s", 1, "index", ""))


def test_error_closes_and_nothing_after_it_counts() -> None:
    client, server = opened()
    data = server.send(ErrorMessage("fenced", "epoch 1 < 2"))
    assert server.state is State.CLOSED
    assert client.receive_data(data + b"garbage after the error") == [
        ErrorMessage("fenced", "epoch 1 < 2")]
    assert client.state is State.CLOSED
    with pytest.raises(ProtocolError, match="closed"):
        client.receive_data(b"more")


def test_a_violation_closes_the_session() -> None:
    _client, server = opened()
    with pytest.raises(ProtocolError):
        server.receive_data(server.send(Ack(1)))  # an ACK sent to the replica
    assert server.state is State.CLOSED


def test_missing_field_is_named() -> None:
    from replicator.wire.frames import Frame, FrameType, encode_frame

    client, server = opened()
    data = encode_frame(Frame(FrameType.BATCH, {"epoch": 1, "stream": "s", "root": "i",
                                                "dir": ""}))
    with pytest.raises(ProtocolError, match="BATCH message without 'seq'"):
        server.receive_data(data)
    del client


@pytest.mark.parametrize("skipped", ["challenge", "proof"])
def test_no_side_reaches_open_without_the_auth_exchange(skipped: str) -> None:
    """The server may not answer HELLO with HELLO (no challenge), nor the client skip its
    proof: the table admits only HELLO, AUTH, AUTH, HELLO (or ERROR)."""
    client, server = Session("client"), Session("server")
    server.receive_data(client.send(hello()))
    if skipped == "challenge":
        with pytest.raises(ProtocolError, match="we send HELLO in state hello-received"):
            server.send(Hello(node="b", role="replica", software="test"))
        with pytest.raises(ProtocolError, match="peer recv HELLO in state hello-sent"):
            client.receive_data(_raw_hello())  # what a server without the exchange would send
    else:
        client.receive_data(server.send(Auth(nonce="n")))
        with pytest.raises(ProtocolError, match="peer recv BATCH in state challenge-sent"):
            server.receive_data(_raw_batch())


def _raw_hello() -> bytes:
    from replicator.wire.frames import encode_frame

    return encode_frame(Hello(node="b", role="replica", software="test").to_frame())


def _raw_batch() -> bytes:
    from replicator.wire.frames import encode_frame

    return encode_frame(Batch(1, "s", 1, "index", "").to_frame())


def test_error_is_allowed_at_every_handshake_step() -> None:
    client, server = Session("client"), Session("server")
    server.receive_data(client.send(hello()))
    assert client.receive_data(server.send(ErrorMessage("unknown-peer", "no"))) == [
        ErrorMessage("unknown-peer", "no")]
    assert client.state is State.CLOSED and server.state is State.CLOSED


def test_before_the_handshake_a_frame_larger_than_a_header_is_refused_unread() -> None:
    """An unauthenticated caller may not make us buffer a full-size frame; once the session is
    open the configured limit applies."""
    big = Batch(1, "s1", 1, "index", "", payload=b"x" * (HANDSHAKE_MAX_FRAME_BYTES + 1))
    sender, _ = opened()
    data = sender.send(big)
    with pytest.raises(ProtocolError, match="exceeds max_frame_bytes"):
        Session("server").receive_data(data[:64])  # the prefix alone is enough to refuse it
    _, server = opened()
    assert server.receive_data(data) == [big]


def test_a_batch_header_leaves_out_fields_at_their_default_and_decodes_whole() -> None:
    plain = Batch(1, "s1", 7, "index", "u1")
    flagged = Batch(1, "s1", 8, "index", "u1", resync=True, part=2, final=False, token=5)
    assert sorted(plain.to_frame().header) == ["dir", "epoch", "root", "seq", "stream"]
    for batch in (plain, flagged):
        assert Batch.from_frame(batch.to_frame()) == batch
