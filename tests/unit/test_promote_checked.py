"""Promote checks every file as it copies it (one read serves the check and the copy): a copy
that differs from the digest journal is refused before the origin is fenced, and a batch the
origin got in while the copy was made makes promote copy again under the fence."""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path

import pytest

from replicator.config import Config, load_config
from replicator.dovecot import logscan
from replicator.dovecot.headers import parse_log
from replicator.hashing import digest
from replicator.promote import helpers, materialize
from replicator.promote.command import PromoteRefused, promote
from replicator.promote.materialize import Staging
from replicator.replica.journal import DigestJournal
from replicator.replica.state import AppliedState, save_json
from tests.unit import dovecot_craft as craft
from tests.unit.test_config import GOOD, write

FILES = {"index/u1/.INBOX/dovecot.index.cache": b"cache of u1",
         "control/u1/.INBOX/subscriptions-like": b"INBOX\n",
         "index/u2/.INBOX/dovecot.index.cache": b"cache of u2"}


def _record(replica: Path, files: dict[str, bytes]) -> None:
    """Write `files` into the replica as the receiver does: the journal first, then the
    files, then the commit mark (carried by the next write, here a record for one of them)."""
    journal = DigestJournal(replica / ".digests")
    batch = journal.begin([(rel, (len(data), digest(data).hex())) for rel, data in files.items()])
    for rel, data in files.items():
        (replica / rel).parent.mkdir(parents=True, exist_ok=True)
        (replica / rel).write_bytes(data)
    journal.commit(batch)
    rel, data = next(iter(files.items()))
    journal.set(rel, len(data), digest(data))  # this record carries the commit mark
    journal.flush()
    journal.close()


@pytest.fixture
def config(tmp_path: Path) -> Config:
    config = load_config(write(tmp_path, GOOD))
    replica = config.replica_root("b")
    replica.mkdir(parents=True)
    save_json(replica / ".applied.json", AppliedState(stream="s", seq=1, epoch=1).as_json(),
              durable=False)
    _record(replica, FILES)
    return config


def _fence(config: Config) -> int:
    path = config.state_dir / "fences.json"
    return int(json.loads(path.read_text()).get("b", 0)) if path.exists() else 0


def test_a_consistent_copy_is_promoted_with_every_file(config: Config) -> None:
    result = promote(config, "b", force=True, uid_gap=0)
    assert sorted(result.users) == ["u1", "u2"] and _fence(config) == result.epoch
    assert result.files_checked == len(FILES)
    for rel, data in FILES.items():
        root, _, path = rel.partition("/")
        assert (config.roots[root] / path).read_bytes() == data


def test_a_damaged_file_is_refused_before_the_fence_and_nothing_is_put_in_place(
        config: Config) -> None:
    (config.replica_root("b") / "index/u2/.INBOX/dovecot.index.cache").write_bytes(b"bit rot")
    with pytest.raises(PromoteRefused, match=r"index/u2/.INBOX/dovecot.index.cache: xxh3-128"):
        promote(config, "b", force=True, uid_gap=0)
    assert _fence(config) == 0, "the origin must stay able to resend (verify --repair)"
    for root in config.roots.values():
        assert {p.name for p in root.iterdir()} <= {"sub"}, "nothing staged or promoted"


def test_a_user_gone_from_the_copy_is_refused_not_skipped(config: Config) -> None:
    for root in ("index", "control"):
        for path in sorted((config.replica_root("b") / root / "u1").rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        (config.replica_root("b") / root / "u1").rmdir()
    with pytest.raises(PromoteRefused, match=r"index/u1/.INBOX/dovecot.index.cache: presence"):
        promote(config, "b", force=True, uid_gap=0)


def test_a_batch_applied_while_the_copy_is_made_makes_promote_copy_again(
        config: Config, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    changed = {"index/u1/.INBOX/dovecot.index.cache": b"cache of u1, one message later"}
    calls: list[int] = []

    real_finish = Staging.finish

    def stage_then_receive(staging: Staging, *args: object, **kwargs: object) -> object:
        staged = real_finish(staging, *args, **kwargs)  # type: ignore[arg-type]
        calls.append(_fence(config))
        if len(calls) == 1:  # the origin, cut off but not down, gets one more batch in
            _record(config.replica_root("b"), changed)
        return staged

    monkeypatch.setattr(Staging, "finish", stage_then_receive)
    with caplog.at_level(logging.WARNING):
        result = promote(config, "b", force=True, uid_gap=0)
    assert calls == [0, result.epoch], "copied once before the fence, once under it"
    assert "changed while promote copied it" in caplog.text
    assert (config.roots["index"] / "u1/.INBOX/dovecot.index.cache").read_bytes() == \
        changed["index/u1/.INBOX/dovecot.index.cache"]


def test_a_damaged_log_the_gap_cannot_be_written_into_is_refused_as_damage(
        config: Config) -> None:
    """The raise fails on a damaged log (seen on Dovecot 2.4: a bit flipped in a record); the
    refusal must name the damage (exit 3), not the raise (exit 2)."""
    log = craft.log_bytes([craft.header_update(24, craft.UID_VALIDITY), craft.append(1, 2),
                           craft.append(3)])
    replica = config.replica_root("b")
    _record(replica, {"index/u1/.box/dovecot.index.log": log})
    damaged = bytearray(log)
    damaged[len(log) - 12:] = b"\xff" * 12  # the last record's header is garbage now
    (replica / "index/u1/.box/dovecot.index.log").write_bytes(bytes(damaged))
    with pytest.raises(PromoteRefused, match=r"index/u1/.box/dovecot.index.log: xxh3-128"):
        promote(config, "b", force=True, uid_gap=1000)


def test_each_log_is_walked_once_for_both_the_gap_and_the_checks(
        config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    """The UID gap replays a mailbox's log and Dovecot's checks parse it, from the same bytes:
    promote walks its records once (logscan keeps the last walk), raises both mailboxes, and
    the logs it writes with the gap parse whole."""
    logs = {f"index/{user}/.INBOX/dovecot.index.log": craft.log_bytes(
        [craft.header_update(24, craft.UID_VALIDITY), craft.append(*uids)])
        for user, uids in (("u1", (1, 2)), ("u2", (1, 2, 3)))}
    _record(config.replica_root("b"), logs)
    walked: list[bytes] = []
    real_walk = logscan._scan

    def counted(data: bytes, start: int, kind: str) -> logscan.Scanned:
        walked.append(bytes(data))
        return real_walk(data, start, kind)

    monkeypatch.setattr(logscan, "_scan", counted)
    monkeypatch.setattr(materialize, "STAGE_PROCESSES", 1)  # every walk in this process
    result = promote(config, "b", force=True, uid_gap=1000)
    assert result.raised == 2 and result.files_checked == len(FILES) + len(logs)
    assert sorted(walked) == sorted(logs.values())
    for rel in logs:
        root, _, path = rel.partition("/")
        assert parse_log((config.roots[root] / path).read_bytes()).torn is None


def test_a_promote_refused_while_helpers_copy_leaves_no_helper_and_no_copy(
        config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    """Helpers start copying before the journal is loaded: a promote then refused ends them
    and removes what they copied."""
    spawned: list[subprocess.Popen[bytes]] = []
    real_spawn = helpers.spawn

    def recorded() -> subprocess.Popen[bytes]:
        spawned.append(real_spawn())
        return spawned[-1]

    monkeypatch.setattr(helpers, "spawn", recorded)
    monkeypatch.setattr(materialize, "STAGE_PROCESSES", 2)
    (config.replica_root("b") / ".digests").unlink()
    with pytest.raises(PromoteRefused, match="has no digest journal"):
        promote(config, "b", force=True, uid_gap=0)
    assert len(spawned) == 1 and spawned[0].returncode is not None
    assert not [p for root in config.roots.values() for p in root.glob(".promote*")]
