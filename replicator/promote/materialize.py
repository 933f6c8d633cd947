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
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

from replicator.promote import helpers
from replicator.promote.stageuser import StagedUser, StageJob, check_against, claim, stage_user
from replicator.verify.expected import Expectations

# Processes staging users at once, this one included (see helpers: threads do not help). More
# than 4 were not measured.
STAGE_PROCESSES = max(1, min(4, os.cpu_count() or 1))
_libc = ctypes.CDLL(None, use_errno=True)


def replica_users(replica: Path, roots: Iterable[str]) -> list[str]:
    """User directories present in any root of the replica."""
    users: set[str] = set()
    for root in roots:
        top = replica / root
        if top.is_dir():
            users |= {p.name for p in top.iterdir() if p.is_dir() and not p.name.startswith(".")}
    return sorted(users)


class Staging:
    """One promote's staging of `users` into `<target root>/<stage_name>/`, every mailbox's
    next UID raised by `gap` in the copy. It starts at once: helper processes (helpers) begin
    copying while the caller still loads the digest journal, and finish() has this process
    join them. Each process claims the next user not yet taken (stageuser.claim), so they all
    finish together however unequal the users are; the files' states are checked against
    the journal once everything is copied. From the moment it is made, the helpers are its
    own: none is left running once finish() returned or raised, or abort() returned."""

    def __init__(self, replica: Path, targets: Mapping[str, Path], users: list[str],
                 stage_name: str, gap: int, *, check: bool = True) -> None:
        umask = os.umask(0)
        os.umask(umask)
        self.job = StageJob(replica, dict(targets), stage_name, gap, umask, check)
        self.users = users
        self.helpers: list[subprocess.Popen[bytes]] = []
        try:
            # a helper's interpreter takes some 50 ms to start: the areas are made meanwhile
            self.helpers = [helpers.spawn()
                            for _ in range(min(STAGE_PROCESSES, len(users)) - 1)]
            for target in targets.values():
                area = target / stage_name
                if area.exists():
                    shutil.rmtree(area)  # our own leftovers from an interrupted promote
                area.mkdir(mode=0o700)
            self.job.claims.mkdir(mode=0o700)
            for helper in self.helpers:
                helpers.send(helper, self.job, users)
        except BaseException:
            self.abort()
            raise

    def finish(self, expected: Mapping[str, Expectations] | None = None) -> list[StagedUser]:
        """Stage the users no helper has claimed, collect the helpers' own, then check every
        user's files against `expected` (the journal's entries, by user; a user it does not
        know has none, so each of its files differs) and Dovecot's checks: each StagedUser
        says what differed. A user whose mailboxes cannot be raised is a failure
        (ReplicatorError, see check_against). On any failure the staging area is removed
        and nothing was made visible."""
        try:
            staged = {s.user: s for s in (stage_user(self.job, user) for user in self.users
                                          if claim(self.job, user))}
            for helper in self.helpers:
                staged |= {s.user: s for s in helpers.collect(helper)}
            for user in self.users:
                check_against(staged[user], None if expected is None
                              else expected.get(user) or Expectations())
            return [staged[user] for user in self.users]
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Stop the helpers, then remove the staging area (nothing of it was visible)."""
        for helper in self.helpers:
            helpers.stop(helper)
        clean_stage(self.job.targets.values(), self.job.stage_name)


def stage(replica: Path, targets: Mapping[str, Path], users: list[str], stage_name: str,
          gap: int, expected: Mapping[str, Expectations] | None = None) -> list[StagedUser]:
    """Staging(...).finish(expected), for a caller with nothing to do meanwhile (no journal
    check without `expected`)."""
    return Staging(replica, targets, users, stage_name, gap,
                   check=expected is not None).finish(expected)


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
