"""Our parsers and the min-next-uid writer against the installed Dovecot (2.3.19 or 2.4.1), for
maildir, mdbox and sdbox: `doveadm dump` and `doveadm mailbox status` are the oracles, IMAP
APPENDUID the proof. tests/unit/test_golden_formats.py checks the other version's files."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest

from replicator.dovecot.doveadm import mailbox_status
from replicator.dovecot.headers import parse_log, parse_uidlist
from replicator.dovecot.instance import DovecotInstance
from replicator.dovecot.listindex import forget_cached_status
from replicator.dovecot.nextuid import header_update_record, raise_next_uid
from tests.golden.capture import mailbox_workload, rotate_logs
from tests.golden.oracle import check_index, check_log, check_replay
from tests.integration.doveadm_dump import dump_index, dump_log, raw_index_copy

pytestmark = pytest.mark.integration
USER = "u1"
BOXES = ("INBOX", "Work")


def _workload(inst: DovecotInstance, rotate: bool) -> None:
    """Appends, flags, keywords and an expunge; with `rotate`, a rotated log (call it last
    before stopping Dovecot: the churn settings delete a .log.2 older than 1 s)."""
    mailbox_workload(inst)
    if rotate:
        rotate_logs(inst)


def _paths(inst: DovecotInstance) -> dict[str, tuple[Path, Path]]:
    return {box: tuple(Path(inst.doveadm("mailbox", "path", "-u", USER, "-t", t, box).strip())
                       for t in ("index", "control")) for box in BOXES}  # type: ignore[misc]


def _check_index_file(index: Path, scratch: Path) -> bool:
    """False when the log the index points at is gone (nothing to dump it beside)."""
    copy = raw_index_copy(index, scratch)
    if copy is None:
        return False
    theirs = dump_index(copy)
    cache = index.with_name(index.name + ".cache")
    check_index(index.read_bytes(), index.name, theirs.header, theirs.extensions,
                theirs.records, cache.read_bytes() if cache.exists() else None, theirs.cache)
    return True


def _check_log_file(log_path: Path) -> None:
    header, records = dump_log(log_path)
    check_log(log_path.read_bytes(), log_path.name, header, records)


def _check_replay(box_dir: Path) -> None:
    """Our replay of index + logs equals what Dovecot builds when it opens the mailbox."""
    index, log2 = box_dir / "dovecot.index", box_dir / "dovecot.index.log.2"
    theirs = dump_index(box_dir).header
    check_replay(index.read_bytes() if index.exists() else None,
                 (box_dir / "dovecot.index.log").read_bytes(),
                 lambda: log2.read_bytes() if log2.exists() else None,
                 int(theirs["next uid"]), int(theirs["uid validity"]))


@pytest.mark.parametrize("churn", [False, True], ids=["plain", "churn"])
def test_parsers_agree_with_doveadm_dump(dovecot_factory: Any, tmp_path: Path,
                                         churn: bool) -> None:
    inst = dovecot_factory("a", users=(USER,), churn=churn)
    _workload(inst, rotate=False)
    if churn:  # also writes mdbox's storage/dovecot.map.index, which churn alone does not
        inst.doveadm("force-resync", "-u", USER, "*")
    status = mailbox_status(inst.config_path, USER)
    paths = _paths(inst)
    if churn:
        rotate_logs(inst)
    inst.stop()
    root = inst.layout.index_root
    indexes = sorted(root.rglob("dovecot.index")) + sorted(root.rglob("dovecot.map.index"))
    logs = sorted(p for p in root.rglob("*.log*") if p.name.endswith((".log", ".log.2")))
    compared = [_check_index_file(index, tmp_path / f"raw{n}") for n, index in enumerate(indexes)]
    for log_path in logs:
        _check_log_file(log_path)
    for box, (index_dir, control_dir) in paths.items():
        _check_replay(index_dir)
        if inst.layout.mail_format == "maildir":
            u = parse_uidlist((control_dir / "dovecot-uidlist").read_bytes())
            assert (u.uid_validity, u.effective_next_uid) == (
                status[box].uidvalidity, status[box].uidnext)
            assert u.records_count >= status[box].messages  # expunged lines go lazily
    print(f"compared {sum(compared)} of {len(indexes)} index files, {len(logs)} logs")
    assert logs and (any(compared) or not churn)
    if churn and inst.layout.mail_format == "mdbox":
        maps = [c for c, i in zip(compared, indexes, strict=True) if i.name == "dovecot.map.index"]
        assert any(maps)
    assert not churn or any(p.name.endswith(".log.2") for p in logs)
    assert inst.error_lines() == []


def _appenduid(client: Any, box: str) -> tuple[int, int]:
    resp = client.append(box, b"Subject: after promote\r\n\r\nnew\r\n")
    validity, uid = resp.split(b"[APPENDUID ")[1].split(b"]")[0].split()
    return int(validity), int(uid)


@pytest.mark.parametrize("churn", [False, True], ids=["plain", "churn"])
def test_raise_next_uid_then_dovecot_hands_out_higher_uids(dovecot_factory: Any,
                                                          churn: bool) -> None:
    inst = dovecot_factory("a", users=(USER,), churn=churn)
    _workload(inst, rotate=churn)
    c = inst.imap(USER)
    cached = c.folder_status("Work", ["UIDNEXT"])[b"UIDNEXT"]  # fills the list index cache
    c.logout()
    before, paths = mailbox_status(inst.config_path, USER), _paths(inst)
    inst.stop()
    maildir = inst.layout.mail_format == "maildir"
    wanted = max(s.uidnext for s in before.values()) + 1000
    for box, (index_dir, control_dir) in paths.items():
        res = raise_next_uid(index_dir, wanted, control_dir=control_dir if maildir else None)
        assert (res.previous_next_uid, res.next_uid) == (before[box].uidnext, wanted)
        assert res.log_offset is not None and res.uidlist_changed == maildir
        again = raise_next_uid(index_dir, wanted - 1, control_dir=control_dir if maildir else None)
        assert not again.changed
    inst.start()
    after = mailbox_status(inst.config_path, USER)
    assert {b: (s.uidnext, s.uidvalidity, s.messages) for b, s in after.items()} == {
        b: (wanted, s.uidvalidity, s.messages) for b, s in before.items()}
    c = inst.imap(USER)
    assert c.folder_status("Work", ["UIDNEXT"])[b"UIDNEXT"] == wanted != cached
    assert _appenduid(c, "Work") == (before["Work"].uidvalidity, wanted)
    assert c.select_folder("INBOX")[b"UIDNEXT"] == wanted
    assert _appenduid(c, "INBOX") == (before["INBOX"].uidvalidity, wanted)
    c.logout()
    _doveadm_writes_the_same_record(inst, paths["Work"][0], wanted + 500, external=maildir)
    assert inst.error_lines() == []


def _doveadm_writes_the_same_record(inst: DovecotInstance, index_dir: Path, value: int,
                                    external: bool) -> None:
    """`doveadm mailbox update --min-next-uid` appends exactly our record, byte for byte."""
    inst.doveadm("mailbox", "update", "-u", USER, "--min-next-uid", str(value), "Work")
    data = (index_dir / "dovecot.index.log").read_bytes()
    found = [data[r.offset:r.end] for r in parse_log(data).records
             if r.name.startswith("header-update")
             and struct.unpack_from("<HHI", data, r.offset + 8) == (28, 4, value)]
    assert found == [header_update_record(value, external=external)]


def test_very_dirty_list_index_needs_forget_cached_status(dovecot_factory: Any) -> None:
    """With mailbox_list_index_very_dirty_syncs the list index keeps answering STATUS with the
    old UIDNEXT after a raise; forget_cached_status is what fixes it."""
    inst = dovecot_factory("a", users=(USER,),
                           extra_config="mailbox_list_index_very_dirty_syncs = yes")
    _workload(inst, rotate=False)
    c = inst.imap(USER)
    old = c.folder_status("Work", ["UIDNEXT"])[b"UIDNEXT"]
    c.logout()
    paths = _paths(inst)
    maildir = inst.layout.mail_format == "maildir"
    inst.stop()
    index_dir, control_dir = paths["Work"]
    raise_next_uid(index_dir, old + 100, control_dir=control_dir if maildir else None)
    inst.start()
    c = inst.imap(USER)
    assert c.folder_status("Work", ["UIDNEXT"])[b"UIDNEXT"] == old  # stale: the problem
    c.logout()
    inst.stop()
    assert forget_cached_status(inst.layout.index_root / USER) is not None
    inst.start()
    c = inst.imap(USER)
    assert c.folder_status("Work", ["UIDNEXT"])[b"UIDNEXT"] == old + 100
    assert _appenduid(c, "Work")[1] == old + 100
    c.logout()
    assert inst.error_lines() == []


@pytest.mark.parametrize("mail_format", ["maildir"])
def test_maildir_file_the_uidlist_never_saw_gets_a_uid_above_the_raise(
        dovecot_factory: Any) -> None:
    """The §4.8 case for maildir: a message the dead node delivered (its body is on the shared
    FS) but whose uidlist line never reached the replica must not get a UID already used."""
    inst = dovecot_factory("a", users=(USER,))
    _workload(inst, rotate=False)
    before, paths = mailbox_status(inst.config_path, USER), _paths(inst)
    inst.stop()
    wanted = before["INBOX"].uidnext + 50
    index_dir, control_dir = paths["INBOX"]
    raise_next_uid(index_dir, wanted, control_dir=control_dir)
    new_dir = inst.layout.mail_root / USER / "Maildir" / "new"
    (new_dir / "1700000000.M1P1.lost").write_bytes(b"Subject: lost\n\nbody\n")
    inst.start()
    uids = sorted(inst.doveadm("fetch", "-u", USER, "uid", "mailbox", "INBOX", "all").split())
    assert f"{wanted}" in uids and max(int(u) for u in uids if u.isdigit()) == wanted
    c = inst.imap(USER)
    assert _appenduid(c, "INBOX") == (before["INBOX"].uidvalidity, wanted + 1)
    c.logout()
    assert inst.error_lines() == []
