"""Putting a replica's users into this node's Dovecot roots, one user at a time, atomically.

Each user's directories are copied (owners, modes and mtimes kept) into a staging directory
inside the target root, with the UID gap already in the files it changes (uids), the staged
tree is flushed to disk (syncfs), and only then renamed into place, so Dovecot sees either
nothing or the whole user. Whatever was in the way is moved aside, never deleted. The renames
are flushed too before promote records the users as promoted.
"""

from __future__ import annotations

import ctypes
import os
import shutil
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from replicator.dovecot.listindex import LIST_LOG
from replicator.errors import ReplicatorError
from replicator.promote.tree import Copier, Listing, list_tree, read_bytes
from replicator.promote.uids import RaiseSummary, find_mailboxes, forgotten_status, raised_files

# Threads copying users at once: the copy is mostly kernel work (inode creation), which runs
# outside the GIL, so a second thread overlaps one user's Python work with another's syscalls.
STAGE_WORKERS = 2
_libc = ctypes.CDLL(None, use_errno=True)


def replica_users(replica: Path, roots: Iterable[str]) -> list[str]:
    """User directories present in any root of the replica."""
    users: set[str] = set()
    for root in roots:
        top = replica / root
        if top.is_dir():
            users |= {p.name for p in top.iterdir() if p.is_dir() and not p.name.startswith(".")}
    return sorted(users)


@dataclass
class StagedUser:
    """One user's staged directories (root -> path) and what raising its mailboxes did."""

    user: str
    dirs: dict[str, Path]
    summary: RaiseSummary


def stage(replica: Path, targets: Mapping[str, Path], users: list[str], stage_name: str,
          gap: int) -> list[StagedUser]:
    """Copy the users into `<target root>/<stage_name>/`, raising every mailbox's next UID by
    `gap` in the copy. On any failure the staging area is removed and nothing was made
    visible; a user whose mailboxes cannot be raised is a failure (ReplicatorError)."""
    for target in targets.values():
        area = target / stage_name
        if area.exists():
            shutil.rmtree(area)  # our own leftovers from an interrupted promote
        area.mkdir(mode=0o700)
    umask = os.umask(0)
    os.umask(umask)
    try:
        with ThreadPoolExecutor(STAGE_WORKERS, thread_name_prefix="promote-copy") as pool:
            futures = [pool.submit(_stage_user, replica, targets, user, stage_name, gap, umask)
                       for user in users]
            try:
                return [future.result() for future in futures]
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
    except BaseException:
        clean_stage(targets.values(), stage_name)
        raise


def _stage_user(replica: Path, targets: Mapping[str, Path], user: str, stage_name: str,
                gap: int, umask: int) -> StagedUser:
    """Copy one user's directories, directory by directory across its roots, so that a
    mailbox's index and control directory are raised together and only that mailbox's new
    bytes are held in memory at a time."""
    sources = {root: f"{replica}/{root}/{user}" for root in targets
               if os.path.isdir(f"{replica}/{root}/{user}")}
    listings = {root: list_tree(top) for root, top in sources.items()}
    staged = {root: f"{targets[root]}/{stage_name}/{user}" for root in sources}
    mailboxes = find_mailboxes({sources[root]: listing.files
                                for root, listing in listings.items()})
    summary, copier = RaiseSummary(), Copier(umask)
    for rel in sorted({rel for listing in listings.values() for rel in listing.files}):
        box = mailboxes.get(rel)
        new = raised_files(box, gap, read_bytes, summary) if box is not None else {}
        for root, listing in listings.items():
            if rel in listing.files:
                if not rel and gap > 0:
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


def sync_filesystems(targets: Iterable[Path]) -> None:
    """One syncfs per root: the staged copies are durable before they become visible, and the
    renames before promote records the users as promoted (an fsync per file would cost a
    journal commit each)."""
    for target in targets:
        fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if _libc.syncfs(fd) != 0:
                raise OSError(ctypes.get_errno(), f"syncfs {target}")
        finally:
            os.close(fd)


def swap_in(user: str, staged: Mapping[str, Path], targets: Mapping[str, Path],
            backup_name: str) -> list[Path]:
    """Rename the user's staged directories into place; what was there goes to a backup
    directory in the same root. Returns the paths moved aside."""
    moved: list[Path] = []
    for root, source in staged.items():
        destination = targets[root] / user
        if destination.exists() or destination.is_symlink():
            backup = targets[root] / backup_name
            backup.mkdir(mode=0o700, exist_ok=True)
            aside = backup / user
            copies = 1
            while aside.exists() or aside.is_symlink():  # promoted again with --force
                copies += 1
                aside = backup / f"{user}.{copies}"
            os.rename(destination, aside)
            moved.append(aside)
        os.rename(source, destination)
    return moved


def clean_stage(targets: Iterable[Path], stage_name: str) -> None:
    for target in targets:
        shutil.rmtree(target / stage_name, ignore_errors=True)
