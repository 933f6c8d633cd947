"""The whole-file rewrites of the min-next-uid writer: maildir's uidlist, and a log-less index.

Both are replaced the way Dovecot replaces them (a temp file in the same directory, then
rename), keeping the original's owner and mode: we run as root, Dovecot as the mail user, and
a root-owned 0600 file would lock Dovecot out of its own mailbox.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from replicator.dovecot.indexfile import NEXT_UID_OFFSET, parse_index
from replicator.dovecot.uidlist import parse_uidlist, with_next_uid

__all__ = ["NextUidError", "raise_in_index_file", "raise_uidlist"]

UIDLIST = "dovecot-uidlist"
_U32 = struct.Struct("<I")


class NextUidError(RuntimeError):
    """The next uid cannot be raised safely here (files locked, missing, or never synced)."""


def raise_uidlist(control_dir: Path, wanted: int, fsync: bool) -> tuple[int, bool] | None:
    """(effective next uid before, rewritten?) of control_dir/dovecot-uidlist; None if absent.

    Mirrors maildir_uidlist_set_next_uid + maildir_uidlist_update: only when the uidlist's
    effective next uid is below `wanted`, under the uidlist dotlock, via dovecot-uidlist.tmp.
    """
    path = control_dir / UIDLIST
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    previous = parse_uidlist(data).effective_next_uid
    if previous >= wanted:
        return previous, False
    lock = control_dir / (UIDLIST + ".lock")
    try:
        os.close(os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    except FileExistsError:
        raise NextUidError(f"{lock} exists: is Dovecot running on it?") from None
    try:
        _replace(path, control_dir / (UIDLIST + ".tmp"), with_next_uid(data, wanted), fsync)
    finally:
        lock.unlink()
    return previous, True


def raise_in_index_file(path: Path, wanted: int, fsync: bool) -> bool:
    """Sets next_uid in dovecot.index itself (used only when the mailbox has no log)."""
    data = bytearray(path.read_bytes())
    if parse_index(bytes(data), path.name).header.next_uid >= wanted:
        return False
    _U32.pack_into(data, NEXT_UID_OFFSET, wanted)
    _replace(path, path.with_name(path.name + ".tmp"), bytes(data), fsync)
    return True


def _replace(path: Path, tmp: Path, data: bytes, fsync: bool) -> None:
    """Writes tmp with path's owner and mode, then renames it over path."""
    st = path.stat()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.fchown(fd, st.st_uid, st.st_gid)
        os.fchmod(fd, st.st_mode & 0o7777)
        os.write(fd, data)
        if fsync:
            os.fdatasync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
