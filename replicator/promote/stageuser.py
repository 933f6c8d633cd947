"""Staging one user: its directories copied from the replica, across its roots, with the UID
gap written into the files it changes."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from replicator.dovecot.listindex import LIST_LOG
from replicator.errors import ReplicatorError
from replicator.promote.tree import Copier, Listing, list_tree, read_bytes
from replicator.promote.uids import RaiseSummary, find_mailboxes, forgotten_status, raised_files


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
    """One user's staged directories (root -> path) and what raising its mailboxes did."""

    user: str
    dirs: dict[str, Path]
    summary: RaiseSummary


def stage_user(job: StageJob, user: str) -> StagedUser:
    """Copy one user's directories, directory by directory across its roots, so that a
    mailbox's index and control directory are raised together and only that mailbox's new
    bytes are held in memory at a time. A mailbox that cannot be raised fails the user
    (ReplicatorError), after the copy, which the caller then removes."""
    sources = {root: f"{job.replica}/{root}/{user}" for root in job.targets
               if os.path.isdir(f"{job.replica}/{root}/{user}")}
    listings = {root: list_tree(top) for root, top in sources.items()}
    staged = {root: f"{job.targets[root]}/{job.stage_name}/{user}" for root in sources}
    mailboxes = find_mailboxes({sources[root]: listing.files
                                for root, listing in listings.items()})
    summary, copier = RaiseSummary(), Copier(job.umask)
    for rel in sorted({rel for listing in listings.values() for rel in listing.files}):
        box = mailboxes.get(rel)
        new = raised_files(box, job.gap, read_bytes, summary) if box is not None else {}
        for root, listing in listings.items():
            if rel in listing.files:
                if not rel and job.gap > 0:
                    new.update(_forgotten_status(sources[root], listing))
                _copy_dir(copier, listing, rel, sources[root], staged[root], new)
    copier.finish()
    if summary.failures:
        raise ReplicatorError(f"cannot raise next UIDs of {user}: "
                              + "; ".join(summary.failures[:5]))
    summary.unsynced = [f"{user}/{rel}" for rel in summary.unsynced]
    return StagedUser(user, {root: Path(path) for root, path in staged.items()}, summary)


def _forgotten_status(top: str, listing: Listing) -> dict[str, bytes]:
    """The user's list index log, made to forget the UIDNEXT values it caches."""
    if LIST_LOG not in listing.files[""]:
        return {}
    data = read_bytes(f"{top}/{LIST_LOG}")
    return {} if data is None else {f"{top}/{LIST_LOG}": forgotten_status(data)}


def _copy_dir(copier: Copier, listing: Listing, rel: str, source: str, staged: str,
              new: Mapping[str, bytes]) -> None:
    src = f"{source}/{rel}" if rel else source
    dst = f"{staged}/{rel}" if rel else staged
    copier.directory(src, dst)
    for name in listing.files[rel]:
        copier.file(f"{src}/{name}", f"{dst}/{name}", new.get(f"{src}/{name}"))
    for name in listing.links.get(rel, ()):
        copier.symlink(f"{src}/{name}", f"{dst}/{name}")
