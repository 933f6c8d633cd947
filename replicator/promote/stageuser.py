"""Staging one user: its directories copied from the replica, across its roots, with the UID
gap written into the files it changes, and every file checked on the way.

Each file is read once. The same bytes serve the UID gap, the check against the digest journal
(the state the origin announced), Dovecot's own acceptance checks and the copy. Promote used to
verify the whole replica first and copy it after: two opens and two reads of every file.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from replicator.dovecot.filekinds import is_transient
from replicator.dovecot.listindex import LIST_LOG
from replicator.errors import ReplicatorError
from replicator.promote.tree import Copier, Listing, list_tree, read_file
from replicator.promote.uids import RaiseSummary, find_mailboxes, forgotten_status, raised_files
from replicator.verify.dovecot_checks import check_directory
from replicator.verify.expected import Expectations
from replicator.verify.model import Difference


@dataclass(frozen=True)
class StageJob:
    """What to stage where: the same for every user of one promote."""

    replica: Path  # replica_dir/<origin>
    targets: dict[str, Path]  # root name -> this node's root
    stage_name: str  # the staging directory's name inside each root
    gap: int
    umask: int  # the promoting process's: modes it would strip are set explicitly


@dataclass
class StagedUser:
    """One user's staged directories (root -> path), what raising its mailboxes did, and
    what checking its files found (with expectations given: nothing else is checked)."""

    user: str
    dirs: dict[str, Path]
    summary: RaiseSummary
    differences: list[Difference] = field(default_factory=list)
    files: int = 0
    bytes_read: int = 0


class DirectoryBytes:
    """The files of one relative directory, in every root, each read at most once."""

    def __init__(self) -> None:
        self._read: dict[str, tuple[bytes, os.stat_result] | None] = {}
        self.bytes = 0

    def get(self, path: str) -> tuple[bytes, os.stat_result] | None:
        if path not in self._read:
            got = self._read[path] = read_file(path)
            self.bytes += len(got[0]) if got is not None else 0
        return self._read[path]

    def limited(self, path: str, limit: int | None) -> bytes | None:
        """At most `limit` bytes of the file, None if absent (what uids.Read is)."""
        got = self.get(path)
        return None if got is None else got[0] if limit is None else got[0][:limit]

    def checked(self, path: Path | str) -> bytes:
        """The file's bytes, FileNotFoundError if absent (what the Dovecot checks read)."""
        got = self.get(os.fspath(path))
        if got is None:
            raise FileNotFoundError(errno.ENOENT, "no such file", os.fspath(path))
        return got[0]


def stage_user(job: StageJob, user: str, expected: Expectations | None = None) -> StagedUser:
    """Copy one user's directories, directory by directory across its roots, so that a
    mailbox's index and control directory are raised together and only that directory's
    bytes are held in memory at a time. With `expected` (the journal's entries for this
    user), every file is checked against it and the Dovecot checks run on each directory:
    what they find is in `differences`, for the caller to refuse. A mailbox that cannot be
    raised fails the user (ReplicatorError), after the copy, which the caller then removes,
    unless the user's files differ from the journal: a damaged log is what the caller then
    reports."""
    sources = {root: f"{job.replica}/{root}/{user}" for root in job.targets
               if os.path.isdir(f"{job.replica}/{root}/{user}")}
    listings = {root: list_tree(top) for root, top in sources.items()}
    staged = {root: f"{job.targets[root]}/{job.stage_name}/{user}" for root in sources}
    mailboxes = find_mailboxes({sources[root]: listing.files
                                for root, listing in listings.items()})
    result = StagedUser(user, {root: Path(path) for root, path in staged.items()},
                        RaiseSummary())
    copier, seen = Copier(job.umask), set[str]()
    for rel in sorted({rel for listing in listings.values() for rel in listing.files}):
        files = DirectoryBytes()
        box = mailboxes.get(rel)
        new = raised_files(box, job.gap, files.limited, result.summary) if box else {}
        for root, listing in listings.items():
            if rel in listing.files:
                if not rel and job.gap > 0:
                    new.update(_forgotten_status(sources[root], listing, files))
                _copy_dir(copier, listing, rel, sources[root], staged[root], new, files)
                if expected is not None:
                    _check_dir(job, user, root, rel, listing, files, expected, seen, result)
        result.bytes_read += files.bytes
    copier.finish()
    if expected is not None:
        result.differences += [d for path in sorted(expected.paths() - seen)
                               if (d := expected.difference(path, None)) is not None]
    summary = result.summary
    # with differences, the damage explains the failures, and is what to report
    if summary.failures and not result.differences:
        raise ReplicatorError(f"cannot raise next UIDs of {user}: "
                              + "; ".join(summary.failures[:5]))
    summary.unsynced = [f"{user}/{rel}" for rel in summary.unsynced]
    return result


def _forgotten_status(top: str, listing: Listing, files: DirectoryBytes) -> dict[str, bytes]:
    """The user's list index log, made to forget the UIDNEXT values it caches."""
    if LIST_LOG not in listing.files[""]:
        return {}
    data = files.limited(f"{top}/{LIST_LOG}", None)
    return {} if data is None else {f"{top}/{LIST_LOG}": forgotten_status(data)}


def _copy_dir(copier: Copier, listing: Listing, rel: str, source: str, staged: str,
              new: Mapping[str, bytes], files: DirectoryBytes) -> None:
    """Copy one directory. A file gone since the listing is not copied: with expectations,
    its absence is then a difference unless the journal no longer expects it either."""
    src = _join(source, rel)
    dst = _join(staged, rel)
    copier.directory(src, dst)
    for name in listing.files[rel]:
        got = files.get(f"{src}/{name}")
        if got is not None:
            data, st = got
            changed = new.get(f"{src}/{name}")
            copier.file(f"{dst}/{name}", st, data if changed is None else changed,
                        own=changed is None)
    for name in listing.links.get(rel, ()):
        copier.symlink(f"{src}/{name}", f"{dst}/{name}")


def _check_dir(job: StageJob, user: str, root: str, rel: str, listing: Listing,
               files: DirectoryBytes, expected: Expectations, seen: set[str],
               result: StagedUser) -> None:
    """What `verify --local` checks, for one directory of the user in one root: each file
    against the journal (paths `<root>/<user>/<rel>/<name>`, as the journal names them), then
    Dovecot's acceptance checks (as verify, the index of a uidlist in a separate control root
    is looked for in the index root)."""
    label = _join(f"{root}/{user}", rel)
    src = _join(f"{job.replica}/{root}/{user}", rel)
    names = {name for name in listing.files[rel] if not is_transient(name)}
    for name in sorted(names):
        path = f"{label}/{name}"
        seen.add(path)
        got = files.get(f"{src}/{name}")
        result.files += got is not None
        if (difference := expected.difference(path, got[0] if got else None)) is not None:
            result.differences.append(difference)
    index_dir = (_join(f"{job.replica}/index/{user}", rel)
                 if root == "control" and "index" in job.targets else src)
    check_directory(src, label, names, files.checked, index_dir, result.differences, [])


def _join(top: str, rel: str) -> str:
    return f"{top}/{rel}" if rel else top
