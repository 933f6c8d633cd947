"""The min-next-uid writer on crafted mailbox directories: what it appends, where, and when it
refuses. The same writer against a real Dovecot is in tests/integration."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from replicator.dovecot.headers import DovecotFormatError, parse_index, parse_log, parse_uidlist
from replicator.dovecot.listindex import LIST_LOG, forget_cached_status
from replicator.dovecot.nextuid import NextUidError, header_update_record, raise_next_uid
from replicator.dovecot.uidstate import replay_next_uid
from tests.unit import dovecot_craft as craft
from tests.unit.lock_holder import held_lock

LOG = "dovecot.index.log"
UIDLIST = b"3 V1700000001 N4 G0123456789abcdef0123456789abcdef\n1 :a\n2 :b\n3 :c\n"


def _log(*records: bytes, **hdr: int) -> bytes:
    return craft.log_bytes([craft.header_update(24, craft.UID_VALIDITY), *records], **hdr)


def _mailbox(tmp_path: Path, log: bytes | None, index: bytes | None = None,
             log2: bytes | None = None) -> Path:
    box = tmp_path / "box"
    box.mkdir(parents=True)
    for name, data in ((LOG, log), ("dovecot.index", index), (LOG + ".2", log2)):
        if data is not None:
            (box / name).write_bytes(data)
    return box


def _next_uid_now(box: Path) -> int:
    """The writer's own replay, re-run from the files: what Dovecot would see now."""
    index = box / "dovecot.index"
    ix = None
    if index.exists():
        raw = index.read_bytes()
        ix = (parse_index(raw).header, raw[:120])
    log = (box / LOG).read_bytes()
    log2 = box / (LOG + ".2")
    return replay_next_uid(ix, parse_log(log).header, log,
                           lambda: log2.read_bytes() if log2.exists() else None).next_uid


def test_record_bytes_match_doveadm() -> None:
    """Known answers copied from logs that `doveadm mailbox update --min-next-uid 1000` wrote
    (the integration test compares with a live doveadm each run)."""
    assert header_update_record(1000, external=True) == bytes.fromhex(
        "80808084 20000010 1c000400 e8030000")
    assert header_update_record(1000, external=False) == bytes.fromhex(
        "80808084 20000000 1c000400 e8030000")


def test_log_only_mailbox_appends_one_record(tmp_path: Path) -> None:
    before = _log(craft.transaction(craft.append(1), craft.flag_update(1, 1)),
                  craft.append(2, 7))
    box = _mailbox(tmp_path, before)
    res = raise_next_uid(box, 1000, control_dir=None)
    after = (box / LOG).read_bytes()
    assert after == before + header_update_record(1000, external=False)
    assert (res.previous_next_uid, res.next_uid, res.log_offset) == (8, 1000, len(before))
    assert res.changed and _next_uid_now(box) == 1000
    assert parse_log(after).torn is None


def test_never_lowers_and_is_idempotent(tmp_path: Path) -> None:
    box = _mailbox(tmp_path, _log(craft.append(1, 2, 3)))
    raise_next_uid(box, 500, control_dir=None)
    size = (box / LOG).stat().st_size
    for lower in (500, 20, 1):
        res = raise_next_uid(box, lower, control_dir=None)
        assert (res.changed, res.previous_next_uid, res.next_uid) == (False, 500, 500)
    assert (box / LOG).stat().st_size == size


def test_index_position_is_the_replay_start(tmp_path: Path) -> None:
    """Records before the index's head offset are already in dovecot.index; after it, not."""
    log = _log(craft.append(1, 2, 3), craft.append(40))
    head = 40 + 16 + 32  # after the uid-validity update and the first append
    index = craft.index_bytes((1, 2, 3), next_uid=4, head_offset=head, tail_offset=head)
    box = _mailbox(tmp_path, log, index)
    assert raise_next_uid(box, 30, control_dir=None).previous_next_uid == 41
    box2 = _mailbox(tmp_path / "x", craft.log_bytes([craft.append(1)]),
                    craft.index_bytes((1,), next_uid=300, head_offset=56))
    assert raise_next_uid(box2, 30, control_dir=None).changed is False


def test_rotated_log_replays_rest_of_log2(tmp_path: Path) -> None:
    log2 = _log(craft.append(1), craft.append(2), file_seq=6)
    index = craft.index_bytes((1,), next_uid=2, log_file_seq=6, head_offset=72)
    log = craft.log_bytes([craft.append(3)], file_seq=7, prev_file_seq=6,
                          prev_file_offset=len(log2))
    box = _mailbox(tmp_path, log, index, log2)
    res = raise_next_uid(box, 100, control_dir=None)
    assert (res.previous_next_uid, res.log_offset) == (4, len(log))
    assert (box / (LOG + ".2")).read_bytes() == log2


def test_reset_log_ignores_the_older_index(tmp_path: Path) -> None:
    index = craft.index_bytes((1,), next_uid=900, log_file_seq=3, head_offset=40)
    log = craft.log_bytes([craft.header_update(24, 42), craft.append(1)], file_seq=4)
    res = raise_next_uid(_mailbox(tmp_path, log, index), 50, control_dir=None)
    assert (res.previous_next_uid, res.next_uid) == (2, 50)


def test_torn_tail_is_cut_before_appending(tmp_path: Path) -> None:
    good = _log(craft.append(1))
    torn = good + craft.transaction(craft.append(2), craft.append(3))[:-5]
    box = _mailbox(tmp_path, torn)
    res = raise_next_uid(box, 10, control_dir=None)
    assert (res.previous_next_uid, res.truncated_bytes) == (2, len(torn) - len(good))
    assert (box / LOG).read_bytes() == good + header_update_record(10, external=False)


def test_maildir_raises_uidlist_and_uses_external_flag(tmp_path: Path) -> None:
    box = _mailbox(tmp_path, _log(craft.append(1, 2, 3)))
    ctl = tmp_path / "ctl"
    ctl.mkdir()
    (ctl / "dovecot-uidlist").write_bytes(UIDLIST + b"4 :partial")
    os.chown(ctl / "dovecot-uidlist", 8, 8)
    os.chmod(ctl / "dovecot-uidlist", 0o640)
    res = raise_next_uid(box, 77, control_dir=ctl)
    assert (res.uidlist_previous, res.uidlist_changed, res.next_uid) == (4, True, 77)
    assert (box / LOG).read_bytes().endswith(header_update_record(77, external=True))
    new = (ctl / "dovecot-uidlist").read_bytes()
    assert new == UIDLIST.replace(b" N4 ", b" N77 ")
    st = (ctl / "dovecot-uidlist").stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (8, 8, 0o640)
    assert sorted(p.name for p in ctl.iterdir()) == ["dovecot-uidlist"]
    assert parse_uidlist(new).effective_next_uid == 77


def test_maildir_never_synced_index_gets_only_the_uidlist(tmp_path: Path) -> None:
    """uid_validity 0 in the index + next_uid > 1 is corruption to Dovecot; its next maildir
    sync copies both from the uidlist instead."""
    log = craft.log_bytes([craft.append(1)])
    box = _mailbox(tmp_path, log)
    ctl = tmp_path / "ctl"
    ctl.mkdir()
    (ctl / "dovecot-uidlist").write_bytes(UIDLIST)
    res = raise_next_uid(box, 60, control_dir=ctl)
    assert (res.log_offset, res.uidlist_changed, res.next_uid) == (None, True, 60)
    assert (box / LOG).read_bytes() == log


def test_dbox_never_synced_index_is_refused_untouched(tmp_path: Path) -> None:
    log = craft.log_bytes([craft.append(1)])
    box = _mailbox(tmp_path, log)
    with pytest.raises(NextUidError, match="uid_validity is 0"):
        raise_next_uid(box, 60, control_dir=None)
    assert (box / LOG).read_bytes() == log


def test_index_without_log_is_patched_by_rename(tmp_path: Path) -> None:
    index = craft.index_bytes((1, 2), next_uid=3)
    box = _mailbox(tmp_path, None, index)
    os.chown(box / "dovecot.index", 8, 8)
    inode = (box / "dovecot.index").stat().st_ino
    res = raise_next_uid(box, 64, control_dir=None)
    assert (res.index_rewritten, res.previous_next_uid, res.next_uid) == (True, 3, 64)
    st = (box / "dovecot.index").stat()
    assert st.st_ino != inode and (st.st_uid, st.st_gid) == (8, 8)
    assert parse_index((box / "dovecot.index").read_bytes()).header.next_uid == 64
    assert not (box / "dovecot.index.tmp").exists()


def test_nothing_to_raise(tmp_path: Path) -> None:
    with pytest.raises(NextUidError, match=r"no dovecot\.index, dovecot\.index\.log or"):
        raise_next_uid(_mailbox(tmp_path, None), 5, control_dir=None)
    with pytest.raises(ValueError, match="not a uid"):
        raise_next_uid(tmp_path, 0, control_dir=None)


def test_locked_log_is_refused(tmp_path: Path) -> None:
    """A process holding Dovecot's fcntl lock on the log (as a running Dovecot would)."""
    log = _log(craft.append(1))
    box = _mailbox(tmp_path, log)
    with held_lock(box / LOG), pytest.raises(NextUidError,
                                              match="is locked: is Dovecot running"):
        raise_next_uid(box, 9, control_dir=None)
    assert (box / LOG).read_bytes() == log


def test_uidlist_dotlock_is_respected(tmp_path: Path) -> None:
    box = _mailbox(tmp_path, _log(craft.append(1)))
    (tmp_path / "dovecot-uidlist").write_bytes(UIDLIST)
    (tmp_path / "dovecot-uidlist.lock").write_bytes(b"")
    with pytest.raises(NextUidError, match=r"dovecot-uidlist\.lock exists"):
        raise_next_uid(box, 9, control_dir=tmp_path)
    assert (tmp_path / "dovecot-uidlist").read_bytes() == UIDLIST


def test_header_update_shrinking_next_uid_is_ignored_like_dovecot(tmp_path: Path) -> None:
    log = _log(craft.append(1, 2, 50), craft.header_update(28, 10))
    assert raise_next_uid(_mailbox(tmp_path, log), 5, control_dir=None).previous_next_uid == 51


def test_index_pointing_past_the_log_is_an_error(tmp_path: Path) -> None:
    log = _log()
    index = craft.index_bytes((), next_uid=1, head_offset=4000)
    with pytest.raises(DovecotFormatError, match=r"^dovecot\.index\.log: at offset 4000: "
                       "replay starts past the end"):
        raise_next_uid(_mailbox(tmp_path, log, index), 5, control_dir=None)


def test_forget_cached_status_transaction(tmp_path: Path) -> None:
    """The list index gets one transaction: boundary, ext-intro of "msgs", ext-reset."""
    log = craft.log_bytes([craft.transaction(craft.append(1))])
    (tmp_path / LIST_LOG).write_bytes(log + b"\x80\x80")  # torn tail
    assert forget_cached_status(tmp_path) == len(log)
    new = parse_log((tmp_path / LIST_LOG).read_bytes())
    added = new.records[len(parse_log(log).records):]
    assert [(r.name, r.size) for r in added] == [
        ("boundary (ext)", 12), ("ext-intro (ext)", 32), ("ext-reset (ext)", 16)]
    data = (tmp_path / LIST_LOG).read_bytes()
    assert struct.unpack_from("<I", data, added[0].offset + 8)[0] == 60  # boundary spans all 3
    assert data[added[1].offset + 8:added[1].end] == struct.pack(
        "<IIIHHHH", 0xFFFFFFFF, 0, 0, 16, 4, 1, 4) + b"msgs"
    assert data[added[2].offset + 8:added[2].end] == bytes(8)  # new_reset_id 0, no preserve
    assert (new.end, new.torn) == (len(data), None)
    assert forget_cached_status(tmp_path / "nouser") is None


def test_gap_raises_above_the_current_next_uid(tmp_path: Path) -> None:
    box = _mailbox(tmp_path, _log(craft.append(1, 2, 3)))
    res = raise_next_uid(box, 1, control_dir=None, gap=1000)
    assert (res.previous_next_uid, res.next_uid) == (4, 1004)
    assert _next_uid_now(box) == 1004


def test_gap_counts_from_a_uidlist_that_is_ahead_of_the_index(tmp_path: Path) -> None:
    """maildir: the uidlist may already have handed out uids the index has not seen yet."""
    box = _mailbox(tmp_path, _log(craft.append(1, 2)))
    ctl = tmp_path / "ctl"
    ctl.mkdir()
    (ctl / "dovecot-uidlist").write_bytes(UIDLIST.replace(b" N4 ", b" N9 "))
    res = raise_next_uid(box, 1, control_dir=ctl, gap=100)
    assert res.next_uid == 109
    assert parse_uidlist((ctl / "dovecot-uidlist").read_bytes()).effective_next_uid == 109
