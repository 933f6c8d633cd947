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
from replicator.promote.stageuser import StagedUser, StageJob, stage_user
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


def spawn_helpers(users: list[str]) -> list[subprocess.Popen[bytes]]:
    """The helper processes a stage() of `users` hands shares to, started now (their
    interpreters start while the caller loads the digest journal; helpers.spawn)."""
    return [helpers.spawn() for _ in _shares(users, STAGE_PROCESSES)[1:]]


def stop_helpers(spawned: Iterable[subprocess.Popen[bytes]]) -> None:
    for helper in spawned:
        helpers.stop(helper)


def stage(replica: Path, targets: Mapping[str, Path], users: list[str], stage_name: str,
          gap: int, expected: Mapping[str, Expectations] | None = None,
          spawned: list[subprocess.Popen[bytes]] | None = None) -> list[StagedUser]:
    """Copy the users into `<target root>/<stage_name>/`, raising every mailbox's next UID by
    `gap` in the copy; a share of the users is staged by helper processes meanwhile
    (`spawned` by spawn_helpers(users), else started here). With `expected` (the digest
    journal's entries, by user), every file copied is checked against them and Dovecot's
    checks: each StagedUser says what differed. On any failure the staging area is removed
    and nothing was made visible; a user whose mailboxes cannot be raised is a failure
    (ReplicatorError). From the moment it is called, the helpers are its own: none is left
    running when it returns or raises."""
    spawned = spawn_helpers(users) if spawned is None else spawned
    try:
        for target in targets.values():
            area = target / stage_name
            if area.exists():
                shutil.rmtree(area)  # our own leftovers from an interrupted promote
            area.mkdir(mode=0o700)
        umask = os.umask(0)
        os.umask(umask)
        job = StageJob(replica, dict(targets), stage_name, gap, umask)
        shares = _shares(users, len(spawned) + 1)
        working = spawned[:len(shares) - 1]
        stop_helpers(spawned[len(working):])  # more than there are users to share
        for helper, share in zip(working, shares[1:], strict=True):
            helpers.send(helper, job, share, _of(expected, share))
        mine_expected = _of(expected, shares[0])
        mine = [stage_user(job, user, None if mine_expected is None else mine_expected[user])
                for user in shares[0]]
        staged = {s.user: s for s in mine}
        for helper in working:
            staged |= {s.user: s for s in helpers.collect(helper)}
        return [staged[user] for user in users]
    except BaseException:
        stop_helpers(spawned)
        clean_stage(targets.values(), stage_name)
        raise


def _of(expected: Mapping[str, Expectations] | None,
        users: list[str]) -> dict[str, Expectations] | None:
    """The expectations of `users` (none for a user the journal does not know: each of its
    files then differs)."""
    return None if expected is None else {u: expected.get(u) or Expectations() for u in users}


def _shares(users: list[str], processes: int) -> list[list[str]]:
    """Users dealt round-robin into at most `processes` shares: nothing says beforehand how
    large a user is, and neighbours by name are as likely alike as not."""
    count = max(1, min(processes, len(users)))
    return [users[k::count] for k in range(count)]


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
