"""The handshake's proofs (wire.auth) and the listener's gate (transport.gate), without sockets.

An exchange between a ClientAuth and a ServerAuth with the same key succeeds; every way an
attacker could try to get through without the key (no proof, a wrong key, a replayed or
reflected proof, a proof for other node ids or another role, malformed values) fails with an
AuthError, which is a remote ProtocolError.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest

from replicator.errors import ProtocolError
from replicator.transport.gate import ConnectionGate, RefusalLog
from replicator.wire.auth import AuthError, ClientAuth, ServerAuth, compute_proof
from replicator.wire.messages import Auth, Hello

KEY = b"k" * 32
OTHER = b"o" * 32


def client_hello(node: str = "a", role: str = "origin") -> Hello:
    return Hello(node=node, role=role, software="test", epoch=1, stream="s")


def exchange(client_key: bytes | None, server_key: bytes | None, *, role: str = "origin",
             dialled: str = "b") -> tuple[ClientAuth, ServerAuth, Hello]:
    """A whole exchange; returns the objects and the server's signed HELLO."""
    client = ClientAuth(client_key, "a", dialled, role)
    server = ServerAuth(server_key, "b", client.hello(client_hello(role=role)))
    server.check_client(client.answer(server.challenge()))
    return client, server, server.sign(Hello(node="b", role="replica", software="test"))


def test_both_sides_prove_the_key() -> None:
    client, _server, reply = exchange(KEY, KEY)
    client.check_server(reply)
    assert len(reply.proof) == 64


def test_without_keys_the_exchange_still_runs_and_checks_the_node_id() -> None:
    client, _server, reply = exchange(None, None)
    client.check_server(reply)
    with pytest.raises(AuthError, match="says it is 'c', configured as 'b'"):
        client.check_server(replace(reply, node="c"))


def test_a_wrong_key_is_refused_by_the_server() -> None:
    with pytest.raises(AuthError, match="proof does not match") as info:
        exchange(OTHER, KEY)
    assert isinstance(info.value, ProtocolError) and info.value.remote


def test_a_client_without_a_key_is_refused_before_any_challenge() -> None:
    server = ServerAuth(KEY, "b", client_hello())  # no nonce: the client does not authenticate
    with pytest.raises(AuthError, match="sent no challenge"):
        server.challenge()


def test_a_client_with_an_empty_proof_is_refused() -> None:
    client = ClientAuth(None, "a", "b", "origin")
    server = ServerAuth(KEY, "b", client.hello(client_hello()))
    with pytest.raises(AuthError, match="did not prove"):
        server.check_client(client.answer(server.challenge()))


def test_a_server_without_the_key_is_refused_by_a_client_that_has_it() -> None:
    client, _server, reply = exchange(KEY, None)
    with pytest.raises(AuthError, match="did not prove it holds the pre-shared key"):
        client.check_server(reply)
    client, _server, reply = exchange(KEY, KEY)
    with pytest.raises(AuthError, match="proof does not match"):
        client.check_server(replace(reply, proof=compute_proof(
            OTHER, "server", "a", "b", "origin", client.nonce, "0" * 64)))


def test_a_replayed_proof_fails_on_a_new_connection() -> None:
    """An eavesdropper replays a client's HELLO and proof: the server's new nonce differs."""
    client = ClientAuth(KEY, "a", "b", "origin")
    first = ServerAuth(KEY, "b", client.hello(client_hello()))
    recorded = client.answer(first.challenge())
    first.check_client(recorded)
    second = ServerAuth(KEY, "b", client.hello(client_hello()))
    second.challenge()
    with pytest.raises(AuthError, match="proof does not match"):
        second.check_client(recorded)


def test_a_reflected_proof_fails() -> None:
    """The server's own proof sent back to it as a client proof, with the nonces it chose."""
    client = ClientAuth(KEY, "a", "b", "origin")
    server = ServerAuth(KEY, "b", client.hello(client_hello()))
    challenge = server.challenge()
    reflected = compute_proof(KEY, "server", "a", "b", "origin", client.nonce, challenge.nonce)
    with pytest.raises(AuthError, match="proof does not match"):
        server.check_client(Auth(proof=reflected))


@pytest.mark.parametrize(("dialled", "role"), [("c", "origin"), ("b", "verifier")])
def test_a_proof_for_another_node_or_role_fails(dialled: str, role: str) -> None:
    """The client proved itself for (a -> dialled, role); the server is b and saw `origin`."""
    client = ClientAuth(KEY, "a", dialled, role)
    server = ServerAuth(KEY, "b", client.hello(client_hello(role="origin")))
    with pytest.raises(AuthError, match="proof does not match"):
        server.check_client(client.answer(server.challenge()))


@pytest.mark.parametrize("bad", ["", "zz" * 32, "A" * 64, "0" * 63, "\udcff" * 64, "é" * 64])
def test_malformed_nonces_and_proofs_are_auth_errors(bad: str) -> None:
    with pytest.raises(AuthError):
        ServerAuth(KEY, "b", replace(client_hello(), nonce=bad)).challenge()
    with pytest.raises(AuthError):
        ClientAuth(KEY, "a", "b", "origin").answer(Auth(nonce=bad))
    client = ClientAuth(KEY, "a", "b", "origin")
    server = ServerAuth(KEY, "b", client.hello(client_hello()))
    server.challenge()
    with pytest.raises(AuthError):
        server.check_client(Auth(proof=bad or "x"))


def test_the_server_signs_only_after_the_client_proved_itself() -> None:
    client = ClientAuth(KEY, "a", "b", "origin")
    server = ServerAuth(KEY, "b", client.hello(client_hello()))
    server.challenge()
    with pytest.raises(AuthError, match="before the client proved itself") as info:
        server.sign(Hello(node="b", role="replica", software="test"))
    assert info.value.remote is False


def test_the_gate_caps_handshakes_per_address_and_in_total() -> None:
    gate = ConnectionGate(max_connections=5, max_unauthenticated=3, per_address=2,
                          hello_timeout=4.0)
    first, second = gate.admit("10.0.0.1", 100.0), gate.admit("10.0.0.1", 100.0)
    assert first is not None and second is not None and first.deadline == 104.0
    assert gate.admit("10.0.0.1", 100.0) is None, "per-address cap"
    third = gate.admit("10.0.0.2", 100.0)
    assert third is not None
    assert gate.admit("10.0.0.3", 100.0) is None, "unauthenticated cap"
    first.authenticated()
    assert gate.admit("10.0.0.3", 100.0) is not None, "an authenticated one frees a slot"
    assert gate.admit("10.0.0.4", 100.0) is None
    second.release()
    second.release()  # idempotent
    assert gate.total == 3 and gate.pending == {"10.0.0.2": 1, "10.0.0.3": 1}
    for address in ("10.0.0.5", "10.0.0.6"):
        admission = gate.admit(address, 100.0)
        assert admission is not None
        admission.authenticated()
    assert gate.admit("10.0.0.7", 100.0) is None, "total cap"


def test_refusals_are_logged_once_per_address_and_reason(
        caplog: pytest.LogCaptureFixture) -> None:
    refusals = RefusalLog(limit=2)
    with caplog.at_level(logging.WARNING):
        logged = [refusals.refuse("10.0.0.1", "auth", "wrong key") for _ in range(100)]
        logged.append(refusals.refuse("10.0.0.1", "cap", "too many"))
        logged.append(refusals.refuse("10.0.0.2", "auth", "wrong key"))
    assert logged == [True] + [False] * 99 + [True, True]
    assert len(caplog.records) == 3
    assert len(refusals.counts) == 2, "bounded memory"
