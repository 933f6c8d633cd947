"""Staging one user: its directories copied from the replica, across its roots, with the UID
gap written into the files it changes, and every file checked on the way.

Each file is read once. The same bytes serve the UID gap, the state checked against the digest
journal (what the origin announced), Dovecot's own acceptance checks and the copy. Promote used
to verify the whole replica first and copy it after: two opens and two reads of every file.

The states are compared with the journal afterwards (check_against), by the promoting process:
staging needs no journal, so helper processes start copying while promote still loads it, and
each process claims the next user not yet taken (claim) until none is left.
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
from replicator.replica.journal import Expected
from replicator.verify.dovecot_checks import check_directory
from replicator.verify.expected import Expectations, state_of
from replicator.verify.model import Difference

CLAIMS = ".claims"  # in the first root's staging area: a directory per user taken


@dataclass(frozen=True)
class StageJob:
    """What to stage where: the same for every user of one promote."""

    replica: Path  # replica_dir/<origin>
    targets: dict[str, Path]  # root name -> this node's root
    stage_name: str  # the staging directory's name inside each root
    gap: int
    umask: int  # the promoting process's: modes it would strip are set explicitly
    check: bool = True  # take each file's state (StagedUser.found), run Dovecot's checks

    @property
    def claims(self) -> Path:
        """Where the processes of this promote claim users (claim)."""
        return self.targets[min(self.targets)] / self.stage_name / CLAIMS


def claim(job: StageJob, user: str) -> bool:
    """Whether this process stages `user`: the first of the promote's processes to ask gets
    it (an atomic mkdir), so they all finish together however unequal the users are, and the
    helpers start before the promoting process has loaded the journal."""
    try:
        os.mkdir(job.claims / user)
    except FileExistsError:
        return False
    return True


@dataclass
class StagedUser:
    """One user's staged directories (root -> path), what raising its mailboxes did, and
    with StageJob.check: what Dovecot's checks found (`differences`, to which check_against
    adds the journal's) and the state of every file the listing named (`found`: journal
    paths `<root>/<user>/<dir>/<name>` -> (size, xxh3-128), None for a file gone since)."""

    user: str
    dirs: dict[str, Path]
    summary: RaiseSummary
    differences: list[Difference] = field(default_factory=list)
    found: dict[str, Expected | None] = field(default_factory=dict)
    bytes_read: int = 0

    @property
    def files(self) -> int:
        """Files checked: those the listing named that were there to read."""
        return sum(state is not None for state in self.found.values())


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


def stage_user(job: StageJob, user: str) -> StagedUser:
    """Copy one user's directories, directory by directory across its roots, so that a
    mailbox's index and control directory are raised together and only that directory's
    bytes are held in memory at a time. With job.check, each file's state is taken and the
    Dovecot checks run on each directory. A mailbox that cannot be raised is in the
    summary's failures: check_against decides what they mean."""
    sources = {root: f"{job.replica}/{root}/{user}" for root in job.targets
               if os.path.isdir(f"{job.replica}/{root}/{user}")}
    listings = {root: list_tree(top) for root, top in sources.items()}
    staged = {root: f"{job.targets[root]}/{job.stage_name}/{user}" for root in sources}
    mailboxes = find_mailboxes({sources[root]: listing.files
                                for root, listing in listings.items()})
    result = StagedUser(user, {root: Path(path) for root, path in staged.items()},
                        RaiseSummary())
    copier = Copier(job.umask)
    for rel in sorted({rel for listing in listings.values() for rel in listing.files}):
        files = DirectoryBytes()
        box = mailboxes.get(rel)
        new = raised_files(box, job.gap, files.limited, result.summary) if box else {}
        for root, listing in listings.items():
            if rel in listing.files:
                if not rel and job.gap > 0:
                    new.update(_forgotten_status(sources[root], listing, files))
                _copy_dir(copier, listing, rel, sources[root], staged[root], new, files)
                if job.check:
                    _check_dir(job, user, root, rel, listing, files, result)
        result.bytes_read += files.bytes
    copier.finish()
    result.summary.unsynced = [f"{user}/{rel}" for rel in result.summary.unsynced]
    return result


def check_against(staged: StagedUser, expected: Expectations | None) -> None:
    """Add to the user's differences what its files' states (`found`) show against the
    journal's entries for the user (`expected`; None: no journal check, and none was taken).
    A mailbox that could not be raised fails the user (ReplicatorError; the caller removes
    the copy), unless the files differ from the journal: a damaged log is then what the
    caller reports."""
    if expected is not None:
        staged.differences += [d for path, state in staged.found.items()
                               if (d := expected.difference_of(path, state)) is not None]
        staged.differences += [d for path in sorted(expected.paths() - staged.found.keys())
                               if (d := expected.difference(path, None)) is not None]
    failures = staged.summary.failures
    if failures and not staged.differences:
        raise ReplicatorError(f"cannot raise next UIDs of {staged.user}: "
                              + "; ".join(failures[:5]))


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
               files: DirectoryBytes, result: StagedUser) -> None:
    """What `verify --local` checks, for one directory of the user in one root: each file's
    state, for check_against (paths `<root>/<user>/<rel>/<name>`, as the journal names
    them), then Dovecot's acceptance checks (as verify, the index of a uidlist in a separate
    control root is looked for in the index root)."""
    label = _join(f"{root}/{user}", rel)
    src = _join(f"{job.replica}/{root}/{user}", rel)
    names = {name for name in listing.files[rel] if not is_transient(name)}
    for name in sorted(names):
        got = files.get(f"{src}/{name}")
        result.found[f"{label}/{name}"] = None if got is None else state_of(got[0])
    index_dir = (_join(f"{job.replica}/index/{user}", rel)
                 if root == "control" and "index" in job.targets else src)
    check_directory(src, label, names, files.checked, index_dir, result.differences, [])


def _join(top: str, rel: str) -> str:
    return f"{top}/{rel}" if rel else top
