"""Making the mailbox list index forget the STATUS values it caches (uidnext among them).

dovecot.list.index (one per user, in the user's index directory) caches each mailbox's
MESSAGES/UNSEEN/RECENT/UIDNEXT in its "msgs" extension and answers STATUS from it while the
mailbox is not open. With default settings Dovecot trusts a cached record only while the
mailbox's dovecot.index.log keeps the size and mtime the list index recorded, so appending to
that log (raise_next_uid) is already enough. With `mailbox_list_index_very_dirty_syncs = yes`
that check is skipped, and STATUS keeps answering the old UIDNEXT (measured on 2.3.19).

`doveadm mailbox update` handles this by zeroing the mailbox's msgs record (uidnext 0 reads as
"not cached"). Finding one mailbox's record would mean replaying the list index's names, so we
zero the msgs record of every mailbox of the user at once, which suits promote (it raises all
of a user's mailboxes anyway): an EXT_INTRO of "msgs" by name followed by an EXT_RESET that
does not preserve data (Dovecot 2.3.19 mail_index_sync_ext_reset clears the extension's data
in every record). Dovecot recomputes each STATUS the next time it is asked and caches it again.
"""

from __future__ import annotations

import struct
from pathlib import Path

from replicator.dovecot import logrecord as lr
from replicator.dovecot.logappend import locked_log
from replicator.dovecot.logscan import scan_records

__all__ = ["LIST_LOG", "forget_cached_status", "forget_status_transaction"]

LIST_LOG = "dovecot.list.index.log"
_INTRO = struct.Struct("<IIIHHHH")  # struct mail_transaction_ext_intro
_RESET = struct.Struct("<IB3x")  # struct mail_transaction_ext_reset
_NO_SHRINK = 0x01
_MSGS = b"msgs"  # struct mailbox_list_index_msgs_record: 4 x u32
_MSGS_RECORD_SIZE, _MSGS_ALIGN = 16, 4


def forget_status_transaction() -> bytes:
    """boundary + ext-intro("msgs") + ext-reset(preserve_data=0), all EXTERNAL like Dovecot's
    own list index transactions."""
    intro = _INTRO.pack(0xFFFFFFFF, 0, 0, _MSGS_RECORD_SIZE, _MSGS_ALIGN, _NO_SHRINK,
                        len(_MSGS)) + _MSGS
    intro += b"\0" * (-len(intro) % 4)
    body = (lr.record_header(lr.EXT_INTRO | lr.EXTERNAL, len(intro)) + intro
            + lr.record_header(lr.EXT_RESET | lr.EXTERNAL, _RESET.size) + _RESET.pack(0, 0))
    size = lr.HEADER_SIZE + 4 + len(body)
    return lr.record_header(lr.BOUNDARY | lr.EXTERNAL, 4) + struct.pack("<I", size) + body


def forget_cached_status(user_index_dir: Path, *, fsync: bool = False) -> int | None:
    """Appends forget_status_transaction() to the user's list index log; returns its offset,
    or None when the user has no list index log (then nothing is cached)."""
    try:
        with locked_log(user_index_dir / LIST_LOG, LIST_LOG) as log:
            _, end, _ = scan_records(log.data, log.header.hdr_size, LIST_LOG)
            log.append(forget_status_transaction(), end, fsync)
            return end
    except FileNotFoundError as e:
        if e.filename != str(user_index_dir / LIST_LOG):
            raise
        return None
