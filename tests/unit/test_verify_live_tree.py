"""verify on a tree that changes under it (a live replica, which the daemon's scrub and
`verify --local` read while batches land): a file deleted between listing and reading is a
presence difference, never an exception that aborts the verification."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from replicator.hashing import digest
from replicator.replica.journal import DigestJournal
from replicator.verify.runner import Reading, verify_offline, verify_replica

FILES = {"index/u1/a-first": b"first file", "index/u1/b-second": b"second file"}


@pytest.fixture
def deleting_after_first_read(tmp_path: Path) -> Iterator[Path]:
    """Deletes index/u1/b-second (in every tree) right after verify read its first file."""
    victims = [tmp_path / tree / "index/u1/b-second" for tree in ("replica", "source")]

    def delete() -> None:
        for victim in victims:
            victim.unlink(missing_ok=True)

    Reading.on_read = delete
    try:
        yield tmp_path
    finally:
        Reading.on_read = None


def _tree(top: Path) -> Path:
    for rel, data in FILES.items():
        (top / rel).parent.mkdir(parents=True, exist_ok=True)
        (top / rel).write_bytes(data)
    return top


def test_replica_file_deleted_mid_verify_is_a_presence_difference(
        deleting_after_first_read: Path) -> None:
    replica = _tree(deleting_after_first_read / "replica")
    journal = DigestJournal(replica / ".digests")
    for rel, data in FILES.items():
        journal.set(rel, len(data), digest(data))
    journal.flush()
    report = verify_replica(replica, ["index"])
    assert not report.errors
    assert [(d.file, d.field, d.found) for d in report.differences] == [
        ("index/u1/b-second", "presence", "absent")]


def test_offline_tree_file_deleted_mid_verify_is_a_presence_difference(
        deleting_after_first_read: Path) -> None:
    source = _tree(deleting_after_first_read / "source")
    replica = _tree(deleting_after_first_read / "replica")
    report = verify_offline(source, replica)
    assert not report.errors
    assert [(d.file, d.field) for d in report.differences] == [
        ("index/u1/b-second", "presence")]
