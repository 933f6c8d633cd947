"""Promote's staging copy on crafted replicas: the UID gap it writes into the copy is exactly
what the on-disk writer (raise_next_uid, forget_cached_status) writes, everything else is
copied with its owner, mode and times, and the replica itself is never modified."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from replicator.dovecot.listindex import LIST_LOG, forget_cached_status
from replicator.dovecot.nextuid import MailboxBytes, plan_raise, raise_next_uid
from replicator.errors import ReplicatorError
from replicator.promote import materialize
from replicator.promote.materialize import stage, swap_in
from tests.unit import dovecot_craft as craft

LOG = "dovecot.index.log"
UIDLIST = b"3 V1700000001 N4 G0123456789abcdef0123456789abcdef\n1 :a\n2 :b\n3 :c\n"
GAP = 1000
MAILDIR_BOXES = (".INBOX", ".box0.m1", ".box0.m2")


def _synced_log(*uids: int) -> bytes:
    return craft.log_bytes([craft.header_update(24, craft.UID_VALIDITY), craft.append(*uids)])


def _replica(base: Path, user: str = "u1") -> Path:
    """A maildir user: index root with logs, caches and the list index log, control root with
    uidlists; one mailbox never synced, one with a torn log tail, a symlink, odd modes."""
    index, control = base / "index" / user, base / "control" / user
    for box in MAILDIR_BOXES:
        (index / box).mkdir(parents=True)
        (control / box).mkdir(parents=True)
        (index / box / LOG).write_bytes(_synced_log(1, 2, 3))
        (index / box / "dovecot.index.cache").write_bytes(b"cache of " + box.encode())
        (control / box / "dovecot-uidlist").write_bytes(UIDLIST)
    torn = index / ".box0.m2" / LOG
    torn.write_bytes(torn.read_bytes() + craft.transaction(craft.append(4))[:-3])
    (index / ".fresh").mkdir()
    (index / ".fresh" / LOG).write_bytes(craft.log_bytes([craft.append(1)]))  # validity 0
    (index / LIST_LOG).write_bytes(craft.log_bytes([craft.transaction(craft.append(1))]))
    (index / "dovecot.list.index").write_bytes(b"list index")
    (control / "subscriptions").write_bytes(b"INBOX\n")
    os.symlink("subscriptions", control / "subscriptions.link")
    os.chmod(index / ".INBOX" / "dovecot.index.cache", 0o640)
    os.chmod(control / ".box0.m1", 0o750)
    for top in (index, control):
        for dirpath, dirs, files in os.walk(top):
            for name in dirs + files:
                os.chown(os.path.join(dirpath, name), 8, 8, follow_symlinks=False)
            os.utime(dirpath, ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    return base


def _tree(top: Path) -> dict[str, tuple[bytes | str, int, int, int]]:
    """path -> (bytes or link target, mode, uid, gid) of everything below top."""
    found: dict[str, tuple[bytes | str, int, int, int]] = {}
    for path in sorted(top.rglob("*")):
        st = path.lstat()
        what: bytes | str = (os.readlink(path) if path.is_symlink() else
                             path.read_bytes() if path.is_file() else "dir")
        found[path.relative_to(top).as_posix()] = (what, st.st_mode, st.st_uid, st.st_gid)
    return found


def _roots(tmp_path: Path) -> dict[str, Path]:
    targets = {"index": tmp_path / "live" / "index", "control": tmp_path / "live" / "control"}
    for target in targets.values():
        target.mkdir(parents=True)
    return targets


def test_staged_copy_is_the_replica_with_the_gap_written_by_the_disk_writer(
        tmp_path: Path) -> None:
    replica = _replica(tmp_path / "replica")
    before = {root: _tree(replica / root) for root in ("index", "control")}
    # the expectation: the old way, raising a copy of the replica in place on disk
    expected = tmp_path / "expected"
    subprocess.run(["cp", "-a", str(replica), str(expected)], check=True)  # owners too
    for box in MAILDIR_BOXES:
        raise_next_uid(expected / "index" / "u1" / box, 1,
                       control_dir=expected / "control" / "u1" / box, gap=GAP)
    forget_cached_status(expected / "index" / "u1")
    targets = _roots(tmp_path)

    [staged] = stage(replica, targets, ["u1"], ".promote-a-2", GAP)

    assert (staged.summary.mailboxes, staged.summary.raised) == (4, 3)
    assert staged.summary.unsynced == ["u1/.fresh"] and staged.summary.failures == []
    for root in ("index", "control"):
        assert _tree(replica / root) == before[root], "the replica must not change"
        assert _tree(staged.dirs[root]) == _tree(expected / root / "u1")
    cache = staged.dirs["index"] / ".INBOX" / "dovecot.index.cache"
    source = replica / "index" / "u1" / ".INBOX" / "dovecot.index.cache"
    assert cache.stat().st_mtime_ns == source.stat().st_mtime_ns
    for directory in (staged.dirs["control"], staged.dirs["control"] / ".box0.m1"):
        assert directory.stat().st_mtime_ns == 1_600_000_000_123_456_789
    assert swap_in("u1", staged.dirs, targets, ".promote-backup-a-2") == []
    assert sorted(p.name for p in targets["index"].iterdir()) == [".promote-a-2", "u1"]


def test_staging_again_gives_the_same_gap_not_a_second_one(tmp_path: Path) -> None:
    replica = _replica(tmp_path / "replica")
    targets = _roots(tmp_path)
    [first] = stage(replica, targets, ["u1"], ".one", GAP)
    [second] = stage(replica, targets, ["u1"], ".two", GAP)
    for root in ("index", "control"):
        assert _tree(first.dirs[root]) == _tree(second.dirs[root])


def test_a_mailbox_that_cannot_be_raised_fails_the_stage_and_leaves_nothing(
        tmp_path: Path) -> None:
    replica = _replica(tmp_path / "replica")
    log = replica / "index" / "u1" / ".box0.m1" / LOG
    log.write_bytes(b"not a log at all, but long enough to be parsed as one" * 3)
    targets = _roots(tmp_path)
    with pytest.raises(ReplicatorError, match=r"cannot raise next UIDs of u1: \.box0\.m1: "):
        stage(replica, targets, ["u1"], ".promote-a-2", GAP)
    assert [list(target.iterdir()) for target in targets.values()] == [[], []]


def test_without_gap_the_copy_is_the_replica(tmp_path: Path) -> None:
    replica = _replica(tmp_path / "replica")
    targets = _roots(tmp_path)
    [staged] = stage(replica, targets, ["u1"], ".promote-a-2", 0)
    assert (staged.summary.mailboxes, staged.summary.raised) == (4, 0)
    for root in ("index", "control"):
        assert _tree(staged.dirs[root]) == _tree(replica / root / "u1")


def test_something_neither_file_nor_directory_is_refused_by_name(tmp_path: Path) -> None:
    replica = _replica(tmp_path / "replica")
    fifo = replica / "control" / "u1" / "a-fifo"
    os.mkfifo(fifo)
    targets = _roots(tmp_path)
    with pytest.raises(ReplicatorError, match=f"{fifo} is neither a file, a directory nor"):
        stage(replica, targets, ["u1"], ".promote-a-2", GAP)
    assert [list(target.iterdir()) for target in targets.values()] == [[], []]


@pytest.mark.parametrize("gap", [0, 5, GAP])
def test_plan_raise_is_what_raise_next_uid_writes(tmp_path: Path, gap: int) -> None:
    """The in-memory plan and the on-disk writer agree byte for byte (they share plan_raise;
    this pins the disk side's reading of the files it was given)."""
    box = tmp_path / "box"
    ctl = tmp_path / "ctl"
    box.mkdir()
    ctl.mkdir()
    log = _synced_log(1, 2, 3) + b"\x80"  # with a torn tail
    (box / LOG).write_bytes(log)
    (ctl / "dovecot-uidlist").write_bytes(UIDLIST)
    plan = plan_raise(MailboxBytes(box, None, log, lambda: None, UIDLIST, True), 60, gap)
    result = raise_next_uid(box, 60, control_dir=ctl, gap=gap)
    assert plan.result == result
    assert (box / LOG).read_bytes() == (plan.log if plan.log is not None else log)
    assert (ctl / "dovecot-uidlist").read_bytes() == (
        plan.uidlist if plan.uidlist is not None else UIDLIST)


def test_helper_processes_stage_their_share_as_this_process_would(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    users = ["u1", "u2", "u3"]
    replica = tmp_path / "replica"
    for user in users:
        _replica(replica, user)
    alone = _roots(tmp_path / "alone")
    monkeypatch.setattr(materialize, "STAGE_PROCESSES", 1)
    inline = stage(replica, alone, users, ".promote-a-2", GAP)
    shared = _roots(tmp_path / "shared")
    monkeypatch.setattr(materialize, "STAGE_PROCESSES", 2)
    helped = stage(replica, shared, users, ".promote-a-2", GAP)
    assert [s.user for s in helped] == users
    for one, other in zip(inline, helped, strict=True):
        assert one.summary == other.summary
        for root in ("index", "control"):
            assert _tree(one.dirs[root]) == _tree(other.dirs[root])


def test_users_are_claimed_not_dealt_out(tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each process stages the next user no other has claimed: a helper that got going while
    this process was still busy (loading the journal, in promote) takes every user it
    reaches first, and each user is staged once. Dealt-out shares made each process stage
    its own share however late it started."""
    users = ["u1", "u2", "u3"]
    replica = tmp_path / "replica"
    for user in users:
        _replica(replica, user)
    monkeypatch.setattr(materialize, "STAGE_PROCESSES", 1)
    inline = stage(replica, _roots(tmp_path / "alone"), users, ".promote-a-2", GAP)
    monkeypatch.setattr(materialize, "STAGE_PROCESSES", 2)
    staging = materialize.Staging(replica, _roots(tmp_path / "shared"), users, ".promote-a-2",
                                  GAP)
    [helper] = staging.helpers
    answer, _ = helper.communicate()  # the helper is done: it claimed everything
    assert helper.returncode == 0
    here: list[str] = []
    real_stage_user = materialize.stage_user
    monkeypatch.setattr(materialize, "stage_user",
                        lambda job, user: here.append(user) or real_stage_user(job, user))
    monkeypatch.setattr(materialize.helpers, "collect", lambda _: _answer(answer))
    staged = staging.finish()
    assert here == [] and [s.user for s in staged] == users
    assert sorted(p.name for p in staging.job.claims.iterdir()) == users
    for one, other in zip(inline, staged, strict=True):
        for root in ("index", "control"):
            assert _tree(one.dirs[root]) == _tree(other.dirs[root])


def _answer(raw: bytes) -> list[materialize.StagedUser]:
    """A helper's answer read off its stdout, as helpers.collect gives it."""
    return [materialize.helpers._staged_from_json(item) for item in json.loads(raw)["staged"]]


def test_a_helper_that_fails_fails_the_stage_with_its_reason(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    replica = tmp_path / "replica"
    for user in ("u1", "u2"):
        _replica(replica, user)
    (replica / "index" / "u2" / ".INBOX" / LOG).write_bytes(b"garbage" * 20)  # u2: a helper's
    targets = _roots(tmp_path)
    monkeypatch.setattr(materialize, "STAGE_PROCESSES", 2)
    with pytest.raises(ReplicatorError, match=r"cannot raise next UIDs of u2: \.INBOX: "):
        stage(replica, targets, ["u1", "u2"], ".promote-a-2", GAP)
    assert [list(target.iterdir()) for target in targets.values()] == [[], []]
