"""What a replica's HELLO says after a batch it could not apply (finding 4 of issue 13): only
the persisted position, and the broken directories, which the origin then does not count as
held until a resend of each is acknowledged."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import replicator.sender.outbox as outbox_module
from replicator.delta.ops import Op, OpCode, Result, encode_ops
from replicator.hashing import digest
from replicator.replica.store import ReplicaStore
from replicator.sender.batcher import Draft
from replicator.sender.outbox import Outbox
from replicator.wire.messages import Batch

KEY = ("index", "u1")


def held_by(outbox: Outbox) -> list[str]:
    async def ask() -> list[str]:
        try:
            return await outbox.wait_replicated(frozenset({KEY}), 1, 0)
        except TimeoutError:
            return []
    return asyncio.run(ask())


def test_a_directory_the_hello_calls_broken_is_not_held_until_resent() -> None:
    outbox = Outbox("s", 1, ["b"], retain_bytes=1 << 20, max_frame_bytes=1 << 20)
    outbox.mark_synced("b")
    outbox.add(Draft(*KEY, [Op(OpCode.ENSURE_DIR, "u1")]))
    outbox.ack("b", 1)
    assert held_by(outbox) == ["b"]
    assert outbox.reported_broken("b", ["index/u1"]) == [KEY], "a resend must be queued"
    assert held_by(outbox) == []
    resend = outbox.add(Draft(*KEY, [Op(OpCode.ENSURE_DIR, "u1")], resync=True))
    outbox.ack("b", resend.seq)
    assert held_by(outbox) == ["b"]


def test_the_position_reported_is_the_one_on_disk(tmp_path: Path) -> None:
    store = ReplicaStore(tmp_path / "replica", tmp_path / "state", frozenset({"index"}), 1 << 20)
    replica = store.origin("a")
    replica.resync("s", 1, 1)
    assert replica.save_state()
    data = b"content"
    op = Op(OpCode.REPLACE, "u1/f", 0, data, raw_size=len(data),
            result=Result(len(data), digest(data)))
    outcome = replica.receive(Batch(1, "s", 1, "index", "u1", payload=encode_ops([op])))
    assert outcome is not None and outcome.ok
    assert (replica.state.seq, replica.persisted.seq) == (1, 0), "applied, not yet recorded"
    assert replica.save_state()
    assert replica.persisted.seq == 1
    bad = Op(OpCode.REPLACE, "u1/g", 0, data, raw_size=len(data), result=Result(1, b"x" * 16))
    refused = replica.receive(Batch(1, "s", 2, "index", "u1", payload=encode_ops([bad])))
    assert refused is not None and not refused.ok
    assert replica.broken_dirs() == ["index/u1"]


@pytest.mark.parametrize("reldir, text", [("", "index"), ("u1/box", "index/u1/box")])
def test_broken_directories_are_named_root_slash_dir(tmp_path: Path, reldir: str,
                                                     text: str) -> None:
    store = ReplicaStore(tmp_path / "replica", tmp_path / "state", frozenset({"index"}), 1 << 20)
    replica = store.origin("a")
    replica.resync("s", 1, 1)
    bad = Op(OpCode.REPLACE, f"{reldir}/g".lstrip("/"), 0, b"x", raw_size=1,
             result=Result(2, b"x" * 16))
    replica.receive(Batch(1, "s", 1, "index", reldir, payload=encode_ops([bad])))
    assert replica.broken_dirs() == [text]
    root, _, rest = text.partition("/")
    assert (root, rest) == ("index", reldir)


@pytest.mark.parametrize(("root", "directory"), [("nosuch", "u1"), ("index", "u1/../.."),
                                                  ("index", "/etc")])
def test_a_batch_for_no_place_we_hold_is_refused_and_the_stream_goes_on(
        tmp_path: Path, root: str, directory: str) -> None:
    """Before, such a batch raised a protocol error: the link dropped, the origin resent the
    same batch on reconnect, and nothing after it ever arrived."""
    store = ReplicaStore(tmp_path / "replica", tmp_path / "state", frozenset({"index"}), 1 << 20)
    replica = store.origin("a")
    replica.resync("s", 1, 1)
    refused = replica.receive(Batch(1, "s", 1, root, directory,
                                    payload=encode_ops([Op(OpCode.ENSURE_DIR, "u1")])))
    assert refused is not None and not refused.ok and "bad place" in refused.reason
    assert replica.broken_dirs() == [], "nothing to repair: no such directory is held"
    data = b"next"
    op = Op(OpCode.REPLACE, "u1/f", 0, data, raw_size=len(data),
            result=Result(len(data), digest(data)))
    outcome = replica.receive(Batch(1, "s", 2, "index", "u1", payload=encode_ops([op])))
    assert outcome is not None and outcome.ok
    assert (tmp_path / "replica" / "a" / "index" / "u1" / "f").read_bytes() == data
    assert not any(p.is_symlink() or p.name == "etc" for p in (tmp_path / "replica").rglob("*"))


def test_a_directory_of_more_ops_than_one_payload_may_hold_is_sent_in_parts(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The receiver's decoder refuses a payload of more than MAX_OPS_PER_PART operations, so
    the outbox starts a new part by count as well as by bytes."""
    monkeypatch.setattr(outbox_module, "MAX_OPS_PER_PART", 3)
    outbox = Outbox("s", 1, ["b"], retain_bytes=1 << 20, max_frame_bytes=1 << 20)
    ops = [Op(OpCode.ENSURE_DIR, f"u1/d{i}") for i in range(7)]
    numbered = outbox.add(Draft(*KEY, ops))
    assert len(numbered.frames) == 3


def test_a_peer_that_never_agreed_on_a_position_holds_nothing() -> None:
    """Nothing numbered yet (a daemon just started: its files reach peers through a manifest
    resync once they connect) must not read as "every peer holds everything": a BARRIER
    answered OK for a peer that had not even connected."""
    outbox = Outbox("s", 1, ["b"], retain_bytes=1 << 20, max_frame_bytes=1 << 20)

    async def barrier() -> list[str]:
        try:
            return await outbox.wait_replicated(frozenset(), 1, 0, target=0)
        except TimeoutError:
            return []
    assert asyncio.run(barrier()) == []
    outbox.mark_synced("b")
    assert asyncio.run(barrier()) == ["b"]


def test_a_peer_whose_connection_ended_holds_nothing_until_it_agrees_again() -> None:
    """A peer that rebooted lost its tmpfs: what it acknowledged before no longer counts
    until its next HELLO says what it holds (resume, or a manifest resync)."""
    outbox = Outbox("s", 1, ["b"], retain_bytes=1 << 20, max_frame_bytes=1 << 20)
    outbox.mark_synced("b")
    outbox.add(Draft(*KEY, [Op(OpCode.ENSURE_DIR, "u1")]))
    outbox.ack("b", 1)
    assert held_by(outbox) == ["b"]
    outbox.mark_disconnected("b")
    assert held_by(outbox) == []
    outbox.mark_synced("b")
    assert held_by(outbox) == ["b"]
