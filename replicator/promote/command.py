"""`dovecot-replicator promote --origin ID`: copy the users out of the replica, checking every
file, fence the origin, put the users in place with a UID safety gap, and say what was done.

Order matters: nothing visible to Dovecot is touched before the fence (a higher epoch for the
origin, written durably) is in place, and a copy made while a batch of the origin could still
change the replica is made again under the fence (_materialize); a copy that fails
verification is never promoted, and the origin is not fenced for it; running promote again
does not overwrite what this node's Dovecot has done since (a marker records the users
promoted).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from replicator.config import Config
from replicator.control.server import request
from replicator.dovecot.filekinds import is_transient
from replicator.errors import ReplicatorError
from replicator.paths import PROMOTE_AREA
from replicator.promote.materialize import (
    Staging,
    clean_stage,
    replica_users,
    swap_in,
    sync_filesystems,
)
from replicator.promote.probe import origin_answers
from replicator.promote.stageuser import StagedUser
from replicator.replica.journal import DigestJournal
from replicator.replica.state import AppliedState, Fences, save_json
from replicator.verify.expected import Expectations, of_journal, split_by_user
from replicator.verify.model import Difference
from replicator.verify.runner import broken_dirs

log = logging.getLogger(__name__)


class PromoteRefused(ReplicatorError):
    exit_code = 3


@dataclass
class PromoteResult:
    origin: str
    epoch: int
    users: list[str] = field(default_factory=list)
    mailboxes: int = 0
    raised: int = 0
    uid_gap: int = 0
    moved_aside: list[str] = field(default_factory=list)
    unsynced: list[str] = field(default_factory=list)  # mailboxes Dovecot had not synced yet
    files_checked: int = 0  # against the digest journal, as they were copied
    bytes_read: int = 0
    already: bool = False
    seconds: float = 0.0
    steps: dict[str, float] = field(default_factory=dict)


def marker_path(config: Config, origin: str) -> Path:
    return config.state_dir / "promoted" / f"{origin}.json"


def promote(config: Config, origin: str, *, users: list[str] | None = None,
            force: bool = False, uid_gap: int | None = None, token: int = 0) -> PromoteResult:
    """Promote `users` (default: every user of the copy). Users promoted before are left
    alone unless `force`: Dovecot here may have changed them since. Promoting in several
    steps (a few users at a time) is fine: each step takes the users not yet done.

    With a fencing `token` (ownership on etcd), etcd already decided that this node owns the
    users: the origin is neither probed nor fenced as a whole (it may still own, and
    replicate, other users; batches for these users with an older token are refused), and
    the token names this promote instead of an epoch."""
    started = time.monotonic()
    replica = _checked_replica(config, origin)
    state = AppliedState.load(replica / ".applied.json")
    marker = marker_path(config, origin)
    done = set(json.loads(marker.read_text())["users"]) if marker.exists() else set()
    wanted = _wanted_users(replica, config, origin, users)
    todo = wanted if force else [u for u in wanted if u not in done]
    epoch = token or max(state.epoch, 1) + 1
    if not todo:
        return PromoteResult(origin, epoch, wanted, already=True)
    if not token:
        _refuse_if_coordinated(config, force)
        _refuse_if_alive(config, origin, force)
    gap = uid_gap if uid_gap is not None else (
        0 if state.sync_policy == "fail" else config.tuning.promote_uid_gap)
    result = PromoteResult(origin, epoch, todo, uid_gap=gap)
    _materialize(config, replica, result, fence=not token)
    marker.parent.mkdir(parents=True, exist_ok=True)
    save_json(marker, {**asdict(result), "users": sorted(done | set(todo)),
                       "time": time.time()}, durable=True)
    result.seconds = time.monotonic() - started
    return result


def _wanted_users(replica: Path, config: Config, origin: str,
                  users: list[str] | None) -> list[str]:
    available = replica_users(replica, config.roots)
    missing = sorted(set(users or []) - set(available))
    if missing:
        raise ReplicatorError(f"no such user(s) in the replica of {origin}: "
                              f"{', '.join(missing)}")
    return sorted(users) if users else available


def tell_daemon_fenced(config: Config, origin: str) -> None:
    """Have the local daemon (if it runs) drop the origin's link now: its loop answers only
    between batches, so once it replied no batch of the origin is being applied any more."""
    with contextlib.suppress(OSError, TimeoutError):  # no daemon: nothing is applying batches
        asyncio.run(request(config.control_socket, f"FENCE\t1\t{origin}", timeout=10))


def _checked_replica(config: Config, origin: str) -> Path:
    if config.peer(origin) is None:
        raise ReplicatorError(f"{origin!r} is not a configured peer of {config.node_id}")
    replica = config.replica_root(origin)
    if not (replica / ".applied.json").exists():
        raise ReplicatorError(f"no replica of {origin} here ({replica} holds none)")
    return replica


def _refuse_if_coordinated(config: Config, force: bool) -> None:
    """With ownership on etcd, a promote by hand would bypass the owner keys (and with them
    the fencing tokens): the old owner could still hold its lease and commit."""
    if config.coordination is not None and not force:
        raise PromoteRefused("ownership is on etcd here ([coordination]): a failover happens by "
                             "itself once the owner's lease expires, and `switchover --to` "
                             "moves users between live nodes. Use --force only if etcd itself "
                             "is gone for good")


def _refuse_if_alive(config: Config, origin: str, force: bool) -> None:
    answer = origin_answers(config, origin)
    if answer is not None and not force:
        raise PromoteRefused(f"refusing to promote {origin}: {answer}. Stop it (or cut it off) "
                             "first, or use --force if it is fenced off by other means")


def _materialize(config: Config, replica: Path, result: PromoteResult, *, fence: bool) -> None:
    """Stage (copy with the UID gap written in, every file checked), fence the origin, sync,
    rename into place, sync the renames.

    The copy is checked as it is made, before the fence: a copy that fails is refused with
    the origin not fenced, so it can still resend what the copy lacks (verify --repair). A
    batch the origin got in meanwhile (it was cut off, not down) changes the digest journal
    before it changes any file, so a journal that changed between the start of the copy and
    the fence means: copy again, now that nothing can change it."""
    targets = dict(config.roots)
    stage_name = f"{PROMOTE_AREA}{result.origin}-{result.epoch}"
    tick = time.monotonic()
    mark = _journal_mark(replica)
    staged = _stage_checked(config, replica, result, stage_name)
    if fence:
        Fences(config.state_dir / "fences.json").raise_to(result.origin, result.epoch)
        tell_daemon_fenced(config, result.origin)
        if _journal_mark(replica) != mark:
            log.warning("the replica of %s changed while promote copied it: copying it again, "
                        "now that %s is fenced", result.origin, result.origin)
            clean_stage(targets.values(), stage_name)
            try:
                staged = _stage_checked(config, replica, result, stage_name)
            except PromoteRefused as exc:
                raise PromoteRefused(f"{exc}. Note: {result.origin} sent batches while this "
                                     "promote copied its replica, and it is fenced now, so it "
                                     "cannot resend until its fence is lowered") from None
    result.steps["copy"] = time.monotonic() - tick
    for user in staged:
        result.mailboxes += user.summary.mailboxes
        result.raised += user.summary.raised
        result.unsynced += user.summary.unsynced
        result.files_checked += user.files
        result.bytes_read += user.bytes_read
    tick = time.monotonic()
    sync_filesystems(targets.values())
    result.steps["sync"] = time.monotonic() - tick
    tick = time.monotonic()
    backup = f"{PROMOTE_AREA}backup-{result.origin}-{result.epoch}"
    for user in staged:
        result.moved_aside += [str(p) for p in swap_in(user.user, user.dirs, targets, backup)]
    clean_stage(targets.values(), stage_name)
    sync_filesystems(targets.values())
    result.steps["rename"] = time.monotonic() - tick


def _stage_checked(config: Config, replica: Path, result: PromoteResult,
                   stage_name: str) -> list[StagedUser]:
    """The users staged, each file checked against the digest journal and Dovecot's checks
    as it is copied (what `verify --local` checks, for the users promoted); refused, with the
    staging area removed, if anything differs. The copy starts first (Staging: helper
    processes copy while this one loads the journal, 0.15 s for 10 000 mailboxes)."""
    targets = dict(config.roots)
    staging = Staging(replica, targets, result.users, stage_name, result.uid_gap)
    try:
        journal = DigestJournal(replica / ".digests")
        if not journal.exists:
            raise PromoteRefused(f"refusing to promote: {replica} has no digest journal "
                                 "(.digests), so it cannot be verified without its origin")
        by_user, loose = split_by_user(of_journal(journal))
        _refuse_if_differs(broken_dirs(replica)
                           + _outside_users(replica, config, by_user, loose))
    except BaseException:
        staging.abort()
        raise
    staged = staging.finish(by_user)
    differences = [d for user in staged for d in user.differences]
    if differences:
        clean_stage(targets.values(), stage_name)
        _refuse_if_differs(differences)
    return staged


def _outside_users(replica: Path, config: Config, by_user: dict[str, Expectations],
                   loose: Expectations) -> list[Difference]:
    """What differs outside the user directories staged: files directly in a root, and every
    file of a user the journal knows but whose directories are all gone from the copy (such
    a user would otherwise just not be promoted). Other users are checked when promoted."""
    differences: list[Difference] = []
    present = set(replica_users(replica, config.roots))
    for root in config.roots:
        top = replica / root
        on_disk = {f"{root}/{e.name}" for e in (os.scandir(top) if top.is_dir() else ())
                   if e.is_file(follow_symlinks=False) and not is_transient(e.name)}
        for rel in sorted(on_disk | {p for p in loose.paths() if p.startswith(f"{root}/")}):
            data = (replica / rel).read_bytes() if rel in on_disk else None
            if (difference := loose.difference(rel, data)) is not None:
                differences.append(difference)
    for user in sorted(set(by_user) - present):
        differences += [d for rel in sorted(by_user[user].paths())
                        if (d := by_user[user].difference(rel, None)) is not None]
    return differences


def _refuse_if_differs(differences: list[Difference]) -> None:
    if differences:
        shown = [f"{d.file}: {d.field}: expected {d.expected}, found {d.found}"
                 for d in differences[:10]]
        raise PromoteRefused(f"refusing to promote: the replica fails verification "
                             f"({len(differences)} difference(s)): " + "; ".join(shown)
                             + ". Let the origin resend it (verify --repair) first")


def _journal_mark(replica: Path) -> tuple[int, int, int] | None:
    """What changes whenever the receiver applies a batch (it records the batch in the digest
    journal before it changes any file): the journal's inode, size and mtime."""
    try:
        st = os.stat(replica / ".digests")
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns
