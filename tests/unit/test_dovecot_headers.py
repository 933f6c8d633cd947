"""Parsers of dovecot.index, dovecot.index.log, dovecot.index.cache and dovecot-uidlist, fed
crafted bytes: whole, cut at every length, with trailing garbage, and deliberately broken."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from replicator.dovecot import logscan
from replicator.dovecot.headers import (
    DovecotFormatError,
    cache_belongs_to,
    is_record_boundary,
    iter_log_records,
    parse_cache,
    parse_index,
    parse_log,
    parse_uidlist,
)
from replicator.dovecot.logrecord import decode_size, encode_size, type_name
from replicator.dovecot.logscan import scan_records
from replicator.dovecot.uidlist import peek_next_uid, with_next_uid
from tests.unit import dovecot_craft as craft

# --- dovecot.index -------------------------------------------------------------------------


def test_index_fields_at_their_offsets() -> None:
    data = craft.index_bytes((1, 2, 7), next_uid=9, seen=2, deleted=1, log_file_seq=3,
                             head_offset=400, tail_offset=360)
    ix = parse_index(data)
    h = ix.header
    assert (h.major_version, h.minor_version, h.base_header_size) == (7, 3, 120)
    assert (h.header_size, h.record_size, h.compat_flags) == (120, 16, 1)
    assert (h.indexid, h.uid_validity, h.next_uid) == (craft.INDEXID, craft.UID_VALIDITY, 9)
    assert (h.messages_count, h.seen_messages_count, h.deleted_messages_count) == (3, 2, 1)
    assert (h.log_file_seq, h.log_file_tail_offset, h.log_file_head_offset) == (3, 360, 400)
    assert (h.log2_rotate_time, h.day_stamp, h.day_first_uid[0]) == (0xFFFFFFFF, 1699920000, 1)
    assert (ix.last_uid, ix.trailing_bytes, ix.extensions) == (7, 0, ())


@given(next_uid=st.integers(2, 2**32 - 1), uid_validity=st.integers(1, 2**32 - 1),
       seq=st.integers(0, 2**32 - 1), head=st.integers(0, 2**32 - 1))
def test_index_header_round_trip(next_uid: int, uid_validity: int, seq: int, head: int) -> None:
    data = craft.index_bytes((1,), next_uid=next_uid, uid_validity=uid_validity,
                             log_file_seq=seq, head_offset=head)
    h = parse_index(data).header
    assert (h.next_uid, h.uid_validity, h.log_file_seq, h.log_file_head_offset) == (
        next_uid, uid_validity, seq, head)


def test_index_extensions_names_and_data() -> None:
    exts = [craft.ext_header("hdr-vsize", b"\x01" * 16, record_align=8),
            craft.ext_header("cache", reset_id=77, record_offset=8, record_size=4,
                             record_align=4)]
    ix = parse_index(craft.index_bytes(extensions=exts))
    assert [e.name for e in ix.extensions] == ["hdr-vsize", "cache"]
    vsize, cache = ix.extensions
    assert (vsize.hdr_offset, vsize.hdr_size, vsize.data) == (120 + 32, 16, b"\x01" * 16)
    assert (cache.reset_id, cache.record_offset, cache.ext_offset) == (77, 8, 120 + 48)
    assert ix.extension("cache") == cache and ix.extension("nope") is None


@pytest.mark.parametrize(("change", "offset", "words"), [
    (dict(major=8), 0, "major version 8"),
    (dict(compat_flags=2), 12, "not little-endian"),
    (dict(flags=1), 20, "corrupted flag"),
    (dict(next_uid=0), 28, "next_uid=0"),
    (dict(uid_validity=0), 24, "uid_validity=0, but next_uid=4"),
    (dict(seen=4), 40, "seen_messages_count 4 > messages_count 3"),
    (dict(first_recent_uid=0), 48, "first_recent_uid=0"),
    (dict(next_uid=3), 120 + 2 * 16, "last message uid 3 >= next_uid 3"),
    (dict(record_size=4, uids=()), 8, "record_size 4 < 8"),
    (dict(messages_count=5), 32, "5 records of 16 bytes need 200 bytes"),
])
def test_index_errors_name_kind_offset_and_problem(change: dict[str, object], offset: int,
                                                   words: str) -> None:
    args = {"uids": (1, 2, 3), **change}
    uids = args.pop("uids")
    with pytest.raises(DovecotFormatError) as err:
        parse_index(craft.index_bytes(uids, **args), "dovecot.map.index")  # type: ignore[arg-type]
    assert err.value.offset == offset and words in str(err.value)
    assert str(err.value).startswith(f"dovecot.map.index: at offset {offset}: ")


def test_index_extension_outside_header() -> None:
    data = bytearray(craft.index_bytes(extensions=[craft.ext_header("cache", b"x" * 8)]))
    struct.pack_into("<I", data, 120, 4096)  # hdr_size far past header_size
    with pytest.raises(DovecotFormatError, match=r"at offset 120: extension .* goes outside"):
        parse_index(bytes(data))


def test_index_cut_anywhere_fails_cleanly() -> None:
    data = craft.index_bytes(extensions=[craft.ext_header("keywords", b"\0" * 8)])
    for cut in range(len(data)):
        with pytest.raises(DovecotFormatError):
            parse_index(data[:cut])
    assert parse_index(data + b"junk").trailing_bytes == 4


@given(st.binary(max_size=400))
def test_index_random_bytes_never_crash(blob: bytes) -> None:
    with contextlib.suppress(DovecotFormatError):
        parse_index(blob)


# --- transaction log -----------------------------------------------------------------------


def test_size_encoding_known_answer_and_round_trip() -> None:
    assert encode_size(16) == bytes.fromhex("80808084")  # seen in a doveadm-written log
    assert decode_size(bytes.fromhex("80808084")) == 16
    assert decode_size(b"\x00\x00\x00\x10") == 0
    for size in (8, 12, 508, 512, 2**14 + 4, 2**21 + 8, 2**30 - 4):
        assert decode_size(encode_size(size)) == size == decode_size(craft.encoded_size(size))
    with pytest.raises(ValueError):
        encode_size(6)


def _sample_log() -> bytes:
    return craft.log_bytes([
        craft.header_update(24, craft.UID_VALIDITY),
        craft.transaction(craft.append(1), craft.flag_update(1, 1)),
        craft.transaction(craft.append(2, 3)),
        craft.header_update(28, 50, external=False),
    ], file_seq=4, prev_file_seq=3, prev_file_offset=999)


def test_log_header_and_records() -> None:
    log = parse_log(_sample_log())
    h = log.header
    assert (h.major_version, h.minor_version, h.hdr_size, h.indexid) == (1, 3, 40, craft.INDEXID)
    assert (h.file_seq, h.prev_file_seq, h.prev_file_offset, h.initial_modseq) == (4, 3, 999, 1)
    assert [r.name for r in log.records] == [
        "header-update (ext)", "boundary (ext)", "append (ext)", "flag-update",
        "boundary (ext)", "append (ext)", "header-update"]
    assert [r.offset for r in log.records] == [40, 56, 68, 84, 104, 116, 140]
    assert (log.end, log.size, log.torn) == (156, 156, None)
    assert list(iter_log_records(_sample_log())) == list(log.records)


def test_log_short_header_fields_read_as_zero() -> None:
    log = parse_log(craft.log_bytes([craft.append(1)], hdr_size=24, minor=1))
    assert (log.header.initial_modseq, log.header.compat_flags, log.records[0].offset) == (0, 0, 24)


def test_record_boundaries() -> None:
    log = parse_log(_sample_log())
    assert all(is_record_boundary(log, r.offset) for r in log.records)
    assert is_record_boundary(log, 40) and is_record_boundary(log, 156)
    assert not any(log.is_record_boundary(o) for o in (0, 44, 60, 155, 157))


def test_every_prefix_stops_at_a_complete_transaction() -> None:
    """Byte-at-a-time: a log cut anywhere parses to a prefix Dovecot would accept."""
    full = _sample_log()
    transaction_ends = {40, 56, 104, 140, 156}
    for cut in range(40, len(full) + 1):
        log = parse_log(full[:cut])
        assert log.end in transaction_ends and log.end <= cut
        assert (log.torn is None) == (log.end == cut)
        assert log.records == parse_log(full).records[:len(log.records)]


def test_incomplete_transaction_stops_at_its_boundary() -> None:
    full = _sample_log()
    log = parse_log(full[:100])  # inside the first transaction (56..104)
    assert (log.end, len(log.records)) == (56, 1)
    assert log.torn is not None and "transaction at 56 spans 48 bytes" in log.torn
    with pytest.raises(DovecotFormatError, match=r"dovecot.index.log: at offset 56: transaction"):
        list(iter_log_records(full[:100]))


def test_unfinished_size_word_and_trailing_garbage_are_torn() -> None:
    zeroed = _sample_log() + b"\0" * 16
    log = parse_log(zeroed)
    assert (log.end, log.torn, len(log.records)) == (156, "unfinished record size", 7)
    short = parse_log(_sample_log() + b"abc")
    assert (short.end, short.torn) == (156, "3 bytes after the last record")


@pytest.mark.parametrize(("record", "words"), [
    (bytes.fromhex("80808081") + struct.pack("<I", 0x20), "record size 4 < 8"),
    (craft.rec(0x20, b""), "empty record contents (type 0x20)"),
    (craft.rec(0x2000, b"\0" * 20), "expunge record missing protection mask"),
    (craft.rec(0x02, b"\0" * 12), "append record size 20 not 8 + n*8"),
    (craft.rec(0x400000, b"\0" * 4), "unknown record type 0x400000"),
])
def test_corrupt_records_raise(record: bytes, words: str) -> None:
    with pytest.raises(DovecotFormatError) as err:
        parse_log(craft.log_bytes([record]))
    assert (err.value.offset, err.value.reason) == (40, words)
    assert parse_log(craft.log_bytes([craft.rec(craft.EXPUNGE_GUID_PROT, b"\0" * 20)])).torn is None


@pytest.mark.parametrize(("change", "offset", "words"), [
    (dict(major=2), 0, "major version 2"),
    (dict(hdr_size=20), 2, "hdr_size 20 < 24"),
    (dict(compat_flags=0), 32, "not little-endian"),
    (dict(indexid=0), 4, "marked corrupted"),
])
def test_log_header_errors(change: dict[str, int], offset: int, words: str) -> None:
    with pytest.raises(DovecotFormatError) as err:
        parse_log(craft.log_bytes((), **change))
    assert err.value.offset == offset and words in err.value.reason


def test_log_cut_inside_header() -> None:
    for cut in range(40):
        with pytest.raises(DovecotFormatError, match=r"^dovecot\.index\.log: at offset"):
            parse_log(craft.log_bytes()[:cut])


@given(st.binary(max_size=200))
def test_log_random_tail_never_crashes(tail: bytes) -> None:
    try:
        log = parse_log(craft.log_bytes() + tail)
    except DovecotFormatError:
        return
    assert 40 <= log.end <= 40 + len(tail)


def test_type_names() -> None:
    assert type_name(0x10000020) == "header-update (ext)"
    assert type_name(0x30000002) == "append (ext) (sync)"
    assert type_name(0x400000) == "unknown: 400000"


# --- dovecot.index.cache -------------------------------------------------------------------


def test_cache_header() -> None:
    c = parse_cache(craft.cache_bytes())
    assert (c.major_version, c.compat_sizeof_uoff_t, c.minor_version) == (1, 8, 1)
    assert (c.indexid, c.file_seq, c.record_count, c.field_header_offset) == (
        craft.INDEXID, 1700000002, 3, 32)
    ix = parse_index(craft.index_bytes(extensions=[craft.ext_header(
        "cache", reset_id=1700000002, record_offset=8, record_size=4, record_align=4)]))
    assert cache_belongs_to(c, ix)
    assert not cache_belongs_to(parse_cache(craft.cache_bytes(file_seq=5)), ix)
    assert not cache_belongs_to(parse_cache(craft.cache_bytes(indexid=5)), ix)


@pytest.mark.parametrize(("change", "words"), [
    (dict(major=2), "at offset 0: unsupported major version 2"),
    (dict(uoff=4), "at offset 1: unsupported uoff_t size 4"),
    (dict(file_seq=0), "at offset 8: file_seq is 0"),
    (dict(field_header_offset=128), "at offset 28: field_header_offset 128 points past"),
    (dict(total=20), "at offset 0: cache header needs 32 bytes, file has 20"),
])
def test_cache_errors(change: dict[str, int], words: str) -> None:
    with pytest.raises(DovecotFormatError, match=f"^dovecot.index.cache: {words}"):
        parse_cache(craft.cache_bytes(**change)[:change.get("total", 64)])


# --- dovecot-uidlist -----------------------------------------------------------------------

V3 = (b"3 V1700000001 N5 G0123456789abcdef0123456789ABCDEF P1\n"
      b"1 :1700000000.M1P1.host,S=20,W=23\n"
      b"4 S123 W130 :1700000000.M2P2.host\n"
      b"9 :1700000000.M3P3.host:2,S\n")


def test_uidlist_v3() -> None:
    u = parse_uidlist(V3)
    assert (u.version, u.uid_validity, u.next_uid) == (3, 1700000001, 5)
    assert u.mailbox_guid == "0123456789abcdef0123456789abcdef"
    assert (u.records_count, u.last_uid, u.partial_tail, u.effective_next_uid) == (3, 9, 0, 10)


def test_uidlist_v1_and_empty() -> None:
    u = parse_uidlist(b"1 1700000001 12\n3 name1\n11 name2\n")
    assert (u.version, u.next_uid, u.records_count, u.mailbox_guid) == (1, 12, 2, None)
    assert parse_uidlist(b"3 V7 N1 Gffffffffffffffffffffffffffffffff\n").effective_next_uid == 1


def test_uidlist_partial_last_line_is_ignored_like_dovecot() -> None:
    u = parse_uidlist(V3 + b"12 :170000")
    assert (u.records_count, u.last_uid, u.partial_tail) == (3, 9, 10)


@pytest.mark.parametrize(("data", "words"), [
    (b"", "at offset 0: no complete header line"),
    (b"3 V1 N2", "at offset 0: no complete header line"),
    (b"x V1 N2\n", "invalid version number"),
    (b"2 V1 N2\n", "unsupported version 2"),
    (b"3 V0 N2\n", "broken header (uidvalidity=0, next_uid=2)"),
    (b"3 V1 Nxy\n", "at offset 5: invalid header value b'Nxy'"),
    (b"3 V1 N2 Gnothex\n", "invalid mailbox GUID"),
    (b"3 V1 N2\n5 :a\n4 :b\n", "at offset 13: uid 4 out of order"),
    (b"3 V1 N2\n5 S1\n", "at offset 8: invalid record line"),
    (b"3 V1 N2\n0 :a\n", "invalid record line"),
    (b"1 1 3\n5 name\n", "uid 5 out of order or range"),
])
def test_uidlist_errors(data: bytes, words: str) -> None:
    with pytest.raises(DovecotFormatError) as err:
        parse_uidlist(data)
    assert words in str(err.value) and str(err.value).startswith("dovecot-uidlist: at offset")


def test_uidlist_next_uid_rewrite_round_trip() -> None:
    out = with_next_uid(V3 + b"12 :partial", 5000)
    assert out.splitlines()[0] == b"3 V1700000001 N5000 G0123456789abcdef0123456789ABCDEF P1"
    assert out.split(b"\n", 1)[1] == V3.split(b"\n", 1)[1]
    assert parse_uidlist(out).effective_next_uid == 5000
    v1 = with_next_uid(b"1 1700000001 12\n3 name1\n", 99)
    assert v1 == b"1 1700000001 99\n3 name1\n"


@pytest.mark.parametrize("data", [
    V3, V3 + b"12 :partial", b"1 1700000001 12\n3 name1\n11 name2\n",
    b"3 V7 N1 Gffffffffffffffffffffffffffffffff\n", b"3 V7 N20\n4 :x\n", b"3 V7 N2\n4 :x\n"])
def test_peek_next_uid_equals_the_full_parse(data: bytes) -> None:
    assert peek_next_uid(data) == parse_uidlist(data).effective_next_uid


def test_peek_next_uid_still_checks_header_and_last_line() -> None:
    for bad in (b"3 V0 N2\n", b"3 V1 N2\n5 broken\n", b"no newline"):
        with pytest.raises(DovecotFormatError):
            peek_next_uid(bad)


def test_scan_only_keeps_the_asked_kinds_and_the_same_end() -> None:
    full = _sample_log()
    for cut in range(40, len(full) + 1):
        every, end, torn = scan_records(full[:cut], 40, "x")
        appends = scan_records(full[:cut], 40, "x", frozenset({0x02}))
        assert appends == ([r for r in every if r.kind == 0x02], end, torn)


def test_a_log_scanned_again_answers_as_a_first_scan_would() -> None:
    """scan_records keeps its last walk of a `bytes` log (promote scans each log twice): the
    kinds asked first and the whole list after, or a caller's list changed in between, give
    what a fresh walk gives."""
    full = _sample_log()
    for cut in range(40, len(full) + 1):
        data = full[:cut]
        fresh = logscan._scan(bytes(data), 40, "x")
        appends = scan_records(data, 40, "x", frozenset({0x02}))
        assert appends == ([r for r in fresh[0] if r.kind == 0x02], fresh[1], fresh[2])
        every = scan_records(data, 40, "x")
        assert every == fresh
        every[0].clear()
        assert scan_records(data, 40, "x") == fresh
        assert scan_records(bytes(bytearray(data)), 40, "x") == fresh  # another object
