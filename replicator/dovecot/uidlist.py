"""Maildir's dovecot-uidlist (control directory): header line, records, and a next-uid rewrite.

Formats (Dovecot 2.3.19 `maildir-uidlist.c`):
  version 1 header  `1 <uidvalidity> <next uid>`,    record `<uid> <filename>`
  version 3 header  `3 V<uidvalidity> N<next uid> G<guid hex> [<key><value> ...]`,
            record  `<uid> [<KEY><value> ...] :<filename>`

The header's next uid may trail the records (Dovecot appends records without rewriting the
header); the next uid Dovecot uses is max(header, last uid + 1).

Missing trailing newline: Dovecot reads with i_stream_read_next_line() and does not ask for a
partial last line, so a final line without "\\n" is ignored (it is an append still being written
or torn by a crash) and is dropped the next time Dovecot recreates the file. We do the same:
`partial_tail` counts those bytes, and `with_next_uid` leaves them out. A header line without
newline means Dovecot sees an empty, broken file (it deletes it): that is an error here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from replicator.dovecot.binfmt import DovecotFormatError

__all__ = ["Uidlist", "parse_uidlist", "peek_next_uid", "with_next_uid"]

KIND = "dovecot-uidlist"
_UID_MAX = 0xFFFFFFFF
_V1_HEADER = re.compile(rb"1 (\d+) (\d+)\b")
_V3_RECORD = re.compile(rb"(\d+) +(?:[^ :][^ ]* +)*:(.+)")
_V1_RECORD = re.compile(rb"(\d+) +(.+)")
_GUID = re.compile(rb"[0-9a-fA-F]{32}")


@dataclass(frozen=True)
class Uidlist:
    version: int
    uid_validity: int
    next_uid: int  # as written in the header
    mailbox_guid: str | None  # 32 hex digits (version 3 `G`), None if absent
    records_count: int
    last_uid: int  # highest record uid, 0 when there are none
    partial_tail: int  # bytes of a final line without newline, ignored as Dovecot does

    @property
    def effective_next_uid(self) -> int:
        """The next uid Dovecot assigns: the header's, or past the last record if higher."""
        return max(self.next_uid, self.last_uid + 1)


def parse_uidlist(data: bytes) -> Uidlist:
    """Header and records, with Dovecot's rules; DovecotFormatError names the line's offset."""
    header_end = data.find(b"\n")
    if header_end < 0:
        raise DovecotFormatError(KIND, 0, "no complete header line")
    version, uid_validity, next_uid, guid = _parse_header(data[:header_end])
    body_end = data.rfind(b"\n") + 1
    count, last = _parse_records(data, header_end + 1, body_end, version, next_uid)
    return Uidlist(version, uid_validity, next_uid, guid, count, last, len(data) - body_end)


def peek_next_uid(data: bytes) -> int:
    """Uidlist.effective_next_uid from the header and the last complete line alone.

    Exact because Dovecot rejects a file whose uids do not increase line by line ("UIDs not
    ordered"), so the last line holds the highest uid; O(1) where parse_uidlist is O(lines),
    which matters for promote on maildirs with tens of thousands of messages.
    """
    header_end = data.find(b"\n")
    if header_end < 0:
        raise DovecotFormatError(KIND, 0, "no complete header line")
    version, _, next_uid, _ = _parse_header(data[:header_end])
    body_end = data.rfind(b"\n") + 1
    last_start = data.rfind(b"\n", 0, body_end - 1) + 1
    if last_start <= header_end:
        return next_uid
    _, last = _parse_records(data, last_start, body_end, version, next_uid)
    return max(next_uid, last + 1)


def with_next_uid(data: bytes, next_uid: int, *, checked: bool = False) -> bytes:
    """The file with its header's next uid set to next_uid and any partial last line dropped.

    checked=True skips validating the records (the caller has already looked at the file)."""
    if not checked:
        parse_uidlist(data)
    header_end = data.find(b"\n")
    tokens = data[:header_end].split(b" ")
    if tokens[0] == b"1":
        tokens[2] = str(next_uid).encode()
    else:
        tokens = [b"N%d" % next_uid if t.startswith(b"N") else t for t in tokens]
    return b" ".join(tokens) + data[header_end:data.rfind(b"\n") + 1]


def _parse_header(line: bytes) -> tuple[int, int, int, str | None]:
    if len(line) < 2 or not line[:1].isdigit() or line[1:2] != b" ":
        raise DovecotFormatError(KIND, 0, "corrupted header (invalid version number)")
    version = line[0] - ord("0")
    if version == 1:
        m = _V1_HEADER.match(line)
        if m is None:
            raise DovecotFormatError(KIND, 0, "corrupted header (version 1)")
        uid_validity, next_uid, guid = int(m[1]), int(m[2]), None
    elif version == 3:
        uid_validity, next_uid, guid = _parse_v3_header(line)
    else:
        raise DovecotFormatError(KIND, 0, f"unsupported version {version}")
    if uid_validity == 0 or next_uid == 0 or max(uid_validity, next_uid) > _UID_MAX:
        raise DovecotFormatError(
            KIND, 0, f"broken header (uidvalidity={uid_validity}, next_uid={next_uid})")
    return version, uid_validity, next_uid, guid


def _parse_v3_header(line: bytes) -> tuple[int, int, str | None]:
    values: dict[bytes, bytes] = {}
    pos = 2
    for token in line[2:].split(b" "):
        if token:
            values[token[:1]] = token[1:]
            if token[:1] in b"VN" and not token[1:].isdigit():
                raise DovecotFormatError(KIND, pos, f"invalid header value {token!r}")
        pos += len(token) + 1
    guid = values.get(b"G")
    if guid is not None and not _GUID.fullmatch(guid):
        raise DovecotFormatError(KIND, 0, f"invalid mailbox GUID {guid!r}")
    return (int(values.get(b"V", b"0")), int(values.get(b"N", b"0")),
            guid.decode().lower() if guid is not None else None)


def _parse_records(data: bytes, start: int, end: int, version: int,
                   next_uid: int) -> tuple[int, int]:
    """(records count, last uid) of the complete lines between start and end."""
    record = _V3_RECORD if version == 3 else _V1_RECORD
    count = prev = 0
    pos = start
    for line in data[start:end].split(b"\n")[:-1]:
        m = record.fullmatch(line)
        if m is None or int(m[1]) == 0 or b"/" in m[2]:
            raise DovecotFormatError(KIND, pos, f"invalid record line {line[:60]!r}")
        uid = int(m[1])
        if uid <= prev or uid >= _UID_MAX or (version == 1 and uid >= next_uid):
            raise DovecotFormatError(KIND, pos, f"uid {uid} out of order or range (after {prev})")
        count, prev, pos = count + 1, uid, pos + len(line) + 1
    return count, prev
