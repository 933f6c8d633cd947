"""The digest journal under crashes: per-batch intent records, torn tails, and what verify and
promote then accept (finding 9 of issue 13)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import xxhash

from replicator.hashing import CHUNK_SIZE, digest
from replicator.replica.journal import DigestJournal
from replicator.testing.tmpfs import fill, small_tmpfs
from replicator.verify.runner import verify_replica


def expected(data: bytes) -> tuple[int, str]:
    return len(data), digest(data).hex()


def replica_with(tmp_path: Path, files: dict[str, bytes]) -> Path:
    base = tmp_path / "a"
    for rel, data in files.items():
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / rel).write_bytes(data)
    (base / "index").mkdir(parents=True, exist_ok=True)
    return base


def test_a_damaged_line_in_the_middle_loses_nothing_after_it(tmp_path: Path) -> None:
    path = tmp_path / ".digests"
    path.write_text('["+", "index/a", 1, "aa"]\n["+", "index/b", 2, "b\n'
                    '["+", "index/c", 3, "cc"]\n')
    journal = DigestJournal(path)
    assert journal.files == {"index/a": (1, "aa"), "index/c": (3, "cc")}


def test_a_torn_tail_is_cut_off_so_later_records_survive(tmp_path: Path) -> None:
    path = tmp_path / ".digests"
    path.write_text('["+", "index/a", 1, "aa"]\n["+", "index/b", 2, "b')  # crash mid-append
    journal = DigestJournal(path, repair=True)
    assert journal.files == {"index/a": (1, "aa")}
    journal.set("index/c", 3, "cc")
    journal.flush()
    assert DigestJournal(path).files == {"index/a": (1, "aa"), "index/c": (3, "cc")}
    assert path.read_text().splitlines() == [
        '["V", 2]', '["+", "index/a", 1, "aa"]', '["+", "index/c", 3, "cc"]']


def test_a_reader_does_not_cut_the_writers_file(tmp_path: Path) -> None:
    path = tmp_path / ".digests"
    path.write_text('["+", "index/a", 1, "aa"]\n["+", "inde')
    DigestJournal(path)  # verify and promote read; only the receiver repairs
    assert path.read_text().endswith('["+", "inde')


def uncommitted_batch(base: Path, old: bytes, new: bytes) -> None:
    """A journal whose last batch was recorded but never marked committed (kill -9 between
    the intent record and the renames, or during them)."""
    journal = DigestJournal(base / ".digests", repair=True)
    journal.set("index/u1/log", *expected(old))
    journal.set("index/u1/gone", *expected(b"gone"))
    journal.flush()
    journal.begin([("index/u1/log", expected(new)), ("index/u1/gone", None),
                   ("index/u1/new", expected(b"new"))])


def test_files_of_an_uncommitted_batch_may_hold_old_or_new(tmp_path: Path) -> None:
    before = replica_with(tmp_path / "before", {"index/u1/log": b"old", "index/u1/gone": b"gone"})
    uncommitted_batch(before, b"old", b"old+new")
    assert verify_replica(before, ["index"]).exit_code == 0, "killed before the renames"
    after = replica_with(tmp_path / "after", {"index/u1/log": b"old+new", "index/u1/new": b"new"})
    uncommitted_batch(after, b"old", b"old+new")
    assert verify_replica(after, ["index"]).exit_code == 0, "killed before the commit mark"


def test_anything_else_is_named_as_damage(tmp_path: Path) -> None:
    base = replica_with(tmp_path, {"index/u1/log": b"torn", "index/u1/gone": b"gone"})
    uncommitted_batch(base, b"old", b"old+new")
    report = verify_replica(base, ["index"])
    assert report.exit_code == 1
    assert [d.file for d in report.differences] == ["index/u1/log"]


def test_the_receiver_settles_an_uncommitted_batch_on_restart(tmp_path: Path) -> None:
    base = replica_with(tmp_path, {"index/u1/log": b"old", "index/u1/gone": b"gone"})
    uncommitted_batch(base, b"old", b"old+new")
    journal = DigestJournal(base / ".digests", repair=True)
    damaged = journal.settle(lambda rel: expected((base / rel).read_bytes())
                             if (base / rel).is_file() else None)
    journal.flush()
    assert damaged == []
    reloaded = DigestJournal(base / ".digests")
    assert not reloaded.uncertain
    assert reloaded.files == {"index/u1/log": expected(b"old"),
                              "index/u1/gone": expected(b"gone")}


def test_one_write_per_batch(tmp_path: Path) -> None:
    journal = DigestJournal(tmp_path / ".digests")
    first = journal.begin([("index/x", expected(b"1"))])
    journal.commit(first)
    journal.flush()  # only a commit mark pending: nothing to write
    second = journal.begin([("index/x", expected(b"12"))])  # carries the first's commit mark
    journal.commit(second)
    journal.flush()
    lines = (tmp_path / ".digests").read_text().splitlines()
    assert [line[:4] for line in lines] == ['["V"', '["B"', '["C"', '["B"']
    reloaded = DigestJournal(tmp_path / ".digests")
    assert reloaded.uncertain == {"index/x": [expected(b"1"), expected(b"12")]}


def test_a_later_record_settles_a_file_of_an_uncommitted_batch(tmp_path: Path) -> None:
    journal = DigestJournal(tmp_path / ".digests")
    journal.begin([("index/x", expected(b"1"))])  # the last batch: no commit mark yet
    journal.set("index/x", *expected(b"raised by promote"))
    journal.flush()
    reloaded = DigestJournal(tmp_path / ".digests")
    assert not reloaded.uncertain
    assert reloaded.files == {"index/x": expected(b"raised by promote")}


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs: needs root")
def test_a_record_that_does_not_fit_leaves_no_trace(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "ram", "64k") as mount:
        journal = DigestJournal(mount / ".digests")
        journal.set("index/kept", *expected(b"kept"))
        journal.flush()
        filler = fill(mount)
        huge = [(f"index/{'n' * 200}{i}", expected(b"x")) for i in range(100)]  # > 4 KiB
        with pytest.raises(OSError):
            journal.begin(huge)
        assert journal.files == {"index/kept": expected(b"kept")} and not journal.uncertain
        filler.unlink()
        journal.set("index/later", *expected(b"later"))
        journal.flush()
        assert DigestJournal(mount / ".digests").files == {
            "index/kept": expected(b"kept"), "index/later": expected(b"later")}


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs: needs root")
def test_a_full_filesystem_never_leaves_a_torn_line_behind(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "ram", "64k") as mount:
        journal = DigestJournal(mount / ".digests")
        journal.set("index/kept", 4, digest(b"kept"))
        journal.flush()
        filler = fill(mount)
        for i in range(100):  # more than the room left in the journal's last page
            journal.set(f"index/{'n' * 200}{i}", 1, digest(b"x"))
        with pytest.raises(OSError):
            journal.flush()
        filler.unlink()
        journal.set("index/later", 5, digest(b"later"))
        journal.flush()
        assert DigestJournal(mount / ".digests").files == journal.files
        assert "index/later" in journal.files


def test_a_batch_that_changes_no_file_leaves_no_record(tmp_path: Path) -> None:
    journal = DigestJournal(tmp_path / ".digests")
    first = journal.begin([("index/x", expected(b"1"))])
    journal.commit(first)
    journal.commit(journal.begin([]))  # directories only: nothing to settle after a crash
    journal.flush()
    second = journal.begin([("index/x", expected(b"12"))])  # still carries the first's mark
    journal.commit(second)
    lines = (tmp_path / ".digests").read_text().splitlines()
    assert [line[:4] for line in lines] == ['["V"', '["B"', '["C"', '["B"']
    assert DigestJournal(tmp_path / ".digests").files == {"index/x": expected(b"12")}


def test_hostile_commit_marks_are_skipped_and_lose_nothing(tmp_path: Path) -> None:
    """Commit marks are read without the JSON parser; one that is not a mark the receiver
    writes goes to the parser, which refuses it like any damaged line."""
    x, y = expected(b"x"), expected(b"y")
    lines = [f'["B", 1, [["index/x", {x[0]}, "{x[1]}"]]]', '["C", 1]',
             '["C", 1x]', '["C", -1]', '["C", ]', '["C", 99999999999999999999999999]',
             '["C", "2"]', f'["B", 2, [["index/y", {y[0]}, "{y[1]}"]]]', '["C", 2]']
    (tmp_path / ".digests").write_text("\n".join(lines) + "\n")
    journal = DigestJournal(tmp_path / ".digests")
    assert journal.files == {"index/x": x, "index/y": y}
    assert not journal.uncertain and not journal.open_batches()


def test_a_journal_from_before_chunked_digests_is_converted_where_files_hold_it(
        tmp_path: Path) -> None:
    """A journal without its `V` line named every file by the xxh3-128 of its whole content.
    A file over one chunk that holds what its entry says gets today's digest (verify passes);
    one that does not keeps the old entry (verify still reports it); small files are named
    alike either way. The receiver rewrites the journal with its `V` line."""
    big, damaged, small = os.urandom(3 * CHUNK_SIZE), os.urandom(CHUNK_SIZE + 1), b"small"
    base = replica_with(tmp_path, {"index/u1/cache": big, "index/u1/other": damaged,
                                   "index/u1/small": small})
    flat = {rel: (len(data), xxhash.xxh3_128_hexdigest(data))
            for rel, data in (("index/u1/cache", big), ("index/u1/other", damaged),
                              ("index/u1/small", small))}
    (base / "index/u1/other").write_bytes(damaged[:-1] + b"!")
    (base / ".digests").write_text("".join(f'["+", "{rel}", {size}, "{hexdigest}"]\n'
                                           for rel, (size, hexdigest) in flat.items()))
    reader = DigestJournal(base / ".digests")
    assert reader.files == {**flat, "index/u1/cache": expected(big)}
    assert not (base / ".digests").read_text().startswith('["V"')  # a reader writes nothing
    report = verify_replica(base, ["index"])
    assert [d.file for d in report.differences] == ["index/u1/other"]
    writer = DigestJournal(base / ".digests", repair=True)
    writer.flush()
    assert (base / ".digests").read_text().splitlines()[0] == '["V", 2]'
    assert DigestJournal(base / ".digests").files == writer.files == reader.files


@pytest.mark.parametrize("line", ['["V"]', '["V", "two"]', '["V", null]', '["V", [2]]'])
def test_a_damaged_version_line_is_skipped_and_loses_nothing(tmp_path: Path, line: str) -> None:
    """A version line that does not parse is skipped like any damaged record: the journal is
    then read as written before versions (small files are named alike either way), and the
    records after it all load."""
    path = tmp_path / ".digests"
    path.write_text(f'{line}\n["+", "index/a", 1, "aa"]\n["+", "index/b", 2, "bb"]\n')
    assert DigestJournal(path).files == {"index/a": (1, "aa"), "index/b": (2, "bb")}
