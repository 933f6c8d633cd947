"""The three ways to verify a replica.

* offline: an origin root and a replica of it, side by side (`--source`, `--replica`);
* replica-only: the replica against the digest journal its receiver kept (promote uses this:
  the origin may be gone);
* online: the replica against the manifest the origin sends over the replication link.

Each compares bytes (xxh3-128) file by file, explains differing Dovecot files field by field,
and runs Dovecot's own acceptance checks on the replica (dovecot_checks), reporting only what
the origin does not share.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from replicator.hashing import digest
from replicator.replica.journal import DigestJournal
from replicator.replica.state import AppliedState
from replicator.verify.dovecot_checks import check_tree
from replicator.verify.expected import of_journal
from replicator.verify.fields import field_differences
from replicator.verify.model import Difference, VerifyReport
from replicator.verify.walk import files_under as walk_files


class Reading:
    """Reads files once, counting the bytes (verify reports how much it read); `on_read`
    (a progress bar's advance) is called once per file read."""

    on_read: Callable[[], None] | None = None

    def __init__(self) -> None:
        self.bytes = 0
        self._cache: dict[str, bytes] = {}

    def __call__(self, path: Path | str) -> bytes:
        key = os.fspath(path)
        data = self._cache.get(key)
        if data is None:
            try:
                with open(key, "rb") as f:
                    data = f.read()
            except NotADirectoryError:  # a file stands where a directory on the way belongs
                raise FileNotFoundError(errno.ENOENT, "no such file", key) from None
            self.bytes += len(data)
            if Reading.on_read is not None:
                Reading.on_read()
            if len(data) < 1 << 20:
                self._cache[key] = data
        return data


def read_if_there(read: Reading, path: Path | str) -> bytes | None:
    """The file's bytes, or None when it vanished since the tree was listed: a live replica's
    applier (or Dovecot, in a source tree) may delete a file between the two. That is a
    presence difference to report, not a reason to give up verifying."""
    try:
        return read(path)
    except FileNotFoundError:
        return None


def files_under(top: Path) -> Iterator[str]:
    """Relative paths of the regular, non-transient files below `top`."""
    return walk_files(os.fspath(top))


def compare_file(label: str, expected: bytes, found: bytes) -> list[Difference]:
    if expected == found:
        return []
    fields = field_differences(label.rpartition("/")[2], expected, found)
    if fields:
        return [Difference(label, f, e, g, "dovecot" if f == "format" else "bytes")
                for f, e, g in fields]
    if len(expected) != len(found):
        return [Difference(label, "size", str(len(expected)), str(len(found)))]
    return [Difference(label, "xxh3-128", digest(expected).hex(), digest(found).hex())]


def verify_offline(source: Path, replica: Path) -> VerifyReport:
    started, read = time.monotonic(), Reading()
    report = VerifyReport("offline", source=str(source), replica=str(replica))
    for path in (source, replica):
        if not path.is_dir():
            report.errors.append(f"{path} is not a directory")
            return report
    mine, theirs = set(files_under(source)), set(files_under(replica))
    for rel in sorted(mine | theirs):
        if rel not in theirs or rel not in mine:
            report.differences.append(Difference(rel, "presence", _where(rel in mine),
                                                 _where(rel in theirs)))
            continue
        mine_now, theirs_now = read_if_there(read, source / rel), read_if_there(read, replica / rel)
        if mine_now is None or theirs_now is None:
            report.differences.append(Difference(rel, "presence", _where(mine_now is not None),
                                                 _where(theirs_now is not None)))
            continue
        report.files += 1
        report.differences += compare_file(rel, mine_now, theirs_now)
    _dovecot_checks(report, [("", source, replica)], read)
    report.bytes_read, report.seconds = read.bytes, time.monotonic() - started
    return report


def verify_replica(base: Path, roots: Iterable[str]) -> VerifyReport:
    """The replica at `base` (replica_dir/<origin>) against its digest journal."""
    started, read = time.monotonic(), Reading()
    report = VerifyReport("replica", replica=str(base))
    journal = DigestJournal(base / ".digests")
    if not journal.exists:
        report.errors.append(f"{base} has no digest journal (.digests): it cannot be verified "
                             "without its origin")
        return report
    report.differences += broken_dirs(base)
    expected = of_journal(journal)
    on_disk = {f"{root}/{rel}" for root in roots for rel in files_under(base / root)}
    for rel in sorted(on_disk | expected.paths()):
        data = read_if_there(read, f"{base}/{rel}") if rel in on_disk else None
        if data is not None:
            report.files += 1
        if (difference := expected.difference(rel, data)) is not None:
            report.differences.append(difference)
    _dovecot_checks(report, [(root, None, base / root) for root in roots], read)
    report.bytes_read, report.seconds = read.bytes, time.monotonic() - started
    return report


def broken_dirs(base: Path) -> list[Difference]:
    """The directories of the replica at `base` its receiver marked broken: a batch for each
    was refused or applied only in part, and the origin has not resent it yet."""
    return [Difference(f"{root}/{reldir}" if reldir else root, "broken", "every batch applied",
                       f"batch {seq} refused: {why or 'unknown reason'}; awaiting the origin's "
                       "resend", "state")
            for root, reldir, seq, why in AppliedState.load(base / ".applied.json").broken_dirs()]


def _dovecot_checks(report: VerifyReport, trees: list[tuple[str, Path | None, Path]],
                    read: Reading) -> None:
    """Dovecot-level problems of each replica tree that its source (if known) does not have."""
    replicas = {label: replica for label, _source, replica in trees}
    for label, source, replica in trees:
        index_top = replicas.get("index") if label == "control" else None
        problems, warnings = check_tree(replica, label, read, index_top)
        if source is not None:
            known = {(d.file, d.field) for d in check_tree(source, label, read, None)[0]}
            problems = [d for d in problems if (d.file, d.field) not in known]
        report.differences += problems
        report.warnings += warnings


def _where(present: bool) -> str:
    return "present" if present else "absent"
