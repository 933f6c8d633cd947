"""Our readers against what `doveadm dump` said about the same bytes.

Shared by the live test (tests/integration/test_dovecot_formats_real.py: the installed
Dovecot's doveadm, right now) and the golden test (tests/unit/test_golden_formats.py: the
doveadm of the Dovecot that wrote the golden files, recorded in their oracle.json). The dumps
are plain dicts: field name as doveadm prints it -> value as text.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from replicator.dovecot.headers import (
    cache_belongs_to,
    is_record_boundary,
    parse_cache,
    parse_index,
    parse_log,
)
from replicator.dovecot.uidstate import replay_next_uid

INDEX_FIELDS = {
    "base_header_size": "base header size", "header_size": "header size",
    "record_size": "record size", "compat_flags": "compat flags", "indexid": "index id",
    "flags": "flags", "uid_validity": "uid validity", "next_uid": "next uid",
    "messages_count": "messages count", "seen_messages_count": "seen messages count",
    "deleted_messages_count": "deleted messages count", "first_recent_uid": "first recent uid",
    "first_unseen_uid_lowwater": "first unseen uid lowwater",
    "first_deleted_uid_lowwater": "first deleted uid lowwater", "log_file_seq": "log file seq",
    "log_file_tail_offset": "log file tail offset",
    "log_file_head_offset": "log file head offset", "log2_rotate_time": "log2 rotate time",
    "last_temp_file_scan": "last temp file scan", "day_stamp": "day stamp",
}
CACHE_FIELDS = {
    "major_version": "major version", "minor_version": "minor version", "indexid": "indexid",
    "file_seq": "file_seq", "continued_record_count": "continued_record_count",
    "record_count": "record_count", "backwards_compat_used_file_size": "used_file_size (old)",
    "deleted_record_count": "deleted_record_count",
    "field_header_offset": "field_header_offset",
}
EXT_FIELDS = {"hdr_size": "hdr_size", "reset_id": "reset_id", "record_offset": "record_offset",
              "record_size": "record_size", "record_align": "record_align"}


def _ints(fields: Mapping[str, str], names: Mapping[str, str]) -> dict[str, int]:
    return {ours: int(fields[theirs]) for ours, theirs in names.items()}


def check_index(data: bytes, name: str, header: Mapping[str, str],
                extensions: Sequence[Mapping[str, str]], records: int,
                cache: bytes | None = None, cache_header: Mapping[str, str] | None = None
                ) -> None:
    """An index file's own header (doveadm dumped it beside a log cut at its head offset),
    extensions, record count, and its cache's header when doveadm showed one."""
    ours = parse_index(data, name)
    h = ours.header
    assert header["version"] == f"{h.major_version}.{h.minor_version}"
    assert {k: getattr(h, k) for k in INDEX_FIELDS} == _ints(header, INDEX_FIELDS)
    assert list(h.day_first_uid) == [int(header[f"day first uid[{i}]"]) for i in range(8)]
    assert [(e.name, *(getattr(e, k) for k in EXT_FIELDS)) for e in ours.extensions] == [
        (x["name"], *_ints(x, EXT_FIELDS).values()) for x in extensions]
    assert records == h.messages_count
    if cache is not None and cache_header and cache_header.get("major version"):
        parsed = parse_cache(cache)
        assert {k: getattr(parsed, k) for k in CACHE_FIELDS} == _ints(cache_header,
                                                                      CACHE_FIELDS)
        assert cache_belongs_to(parsed, ours)


def check_log(data: bytes, name: str, header: Mapping[str, str],
              records: Sequence[Sequence[Any]]) -> None:
    """A transaction log's header and every record's offset, type name and size."""
    log = parse_log(data, name)
    h = log.header
    assert dict(header) == {
        "version": f"{h.major_version}.{h.minor_version}", "hdr size": str(h.hdr_size),
        "index id": str(h.indexid), "file seq": str(h.file_seq),
        "prev file": f"{h.prev_file_seq}/{h.prev_file_offset}",
        "create stamp": str(h.create_stamp), "initial modseq": str(h.initial_modseq),
        "compat flags": f"{h.compat_flags:x}"}
    assert [(r.offset, r.name, r.size) for r in log.records] == [tuple(r) for r in records]
    assert (log.torn, log.end) == (None, len(data))


def check_replay(index: bytes | None, log: bytes, log2: Callable[[], bytes | None],
                 next_uid: int, uid_validity: int) -> None:
    """Our replay of index + logs gives the next UID and UIDVALIDITY Dovecot built."""
    ix = None
    if index is not None:
        ix = (parse_index(index).header, index[:120])
        parsed = parse_log(log)
        if ix[0].log_file_seq == parsed.header.file_seq:
            assert is_record_boundary(parsed, ix[0].log_file_head_offset)
    state = replay_next_uid(ix, parse_log(log).header, log, log2)
    assert (state.next_uid, state.uid_validity) == (next_uid, uid_validity)
