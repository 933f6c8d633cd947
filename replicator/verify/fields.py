"""When two versions of a Dovecot file differ, say how in Dovecot's own terms.

"next_uid expected 12, found 10" tells an operator more than two digests do. Only the fields
that matter for failing over (UIDs, UIDVALIDITY, message counts, log positions) are compared;
when none of them differs, the caller reports the digests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from replicator.dovecot.filekinds import FileKind, classify
from replicator.dovecot.headers import (
    DovecotFormatError,
    parse_cache,
    parse_index,
    parse_log,
    parse_uidlist,
)

INDEX_FIELDS = ("indexid", "uid_validity", "next_uid", "messages_count", "log_file_seq",
                "log_file_tail_offset", "log_file_head_offset")
LOG_FIELDS = ("indexid", "file_seq", "prev_file_seq", "prev_file_offset")
CACHE_FIELDS = ("indexid", "file_seq")
UIDLIST_FIELDS = ("version", "uid_validity", "next_uid", "records_count", "last_uid")


def _index(data: bytes) -> dict[str, Any]:
    header = parse_index(data).header
    return {name: getattr(header, name) for name in INDEX_FIELDS}


def _log(data: bytes) -> dict[str, Any]:
    log = parse_log(data)
    values = {name: getattr(log.header, name) for name in LOG_FIELDS}
    values["records_end"] = log.end
    return values


def _cache(data: bytes) -> dict[str, Any]:
    header = parse_cache(data)
    return {name: getattr(header, name) for name in CACHE_FIELDS}


def _uidlist(data: bytes) -> dict[str, Any]:
    parsed = parse_uidlist(data)
    return {name: getattr(parsed, name) for name in UIDLIST_FIELDS}


_PARSERS: dict[FileKind, Callable[[bytes], dict[str, Any]]] = {
    FileKind.INDEX: _index, FileKind.BACKUP: _index, FileKind.LOG: _log,
    FileKind.CACHE: _cache, FileKind.UIDLIST: _uidlist,
}


def field_differences(name: str, expected: bytes, found: bytes) -> list[tuple[str, str, str]]:
    """(field, expected, found) for each header field that differs; [] if none (or unknown)."""
    parser = _PARSERS.get(classify(name))
    if parser is None:
        return []
    try:
        want = parser(expected)
    except DovecotFormatError:
        return []
    try:
        got = parser(found)
    except DovecotFormatError as exc:
        return [("format", "a file Dovecot accepts", str(exc))]
    return [(key, str(want[key]), str(got[key])) for key in want if want[key] != got[key]]
