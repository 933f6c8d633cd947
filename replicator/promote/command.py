"""`dovecot-replicator promote --origin ID`: fence the origin, check the copy, put its users in
place with a UID safety gap, and say what was done.

Order matters: nothing is touched before the fence (a higher epoch for the origin, written
durably) is in place, so no batch of the old origin can change the copy while it is being
promoted; a copy that fails verification is never promoted; and running promote again does
not overwrite what this node's Dovecot has done since (a marker records the users promoted).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from replicator.config import Config
from replicator.control.server import request
from replicator.errors import ReplicatorError
from replicator.promote.materialize import (
    clean_stage,
    replica_users,
    stage,
    swap_in,
    sync_filesystems,
)
from replicator.promote.probe import origin_answers
from replicator.replica.state import AppliedState, Fences, save_json
from replicator.verify.runner import verify_replica


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
    _refuse_if_damaged(replica, config)
    if not token:
        Fences(config.state_dir / "fences.json").raise_to(origin, epoch)
        tell_daemon_fenced(config, origin)
    gap = uid_gap if uid_gap is not None else (
        0 if state.sync_policy == "fail" else config.tuning.promote_uid_gap)
    result = PromoteResult(origin, epoch, todo, uid_gap=gap)
    _materialize(config, replica, result)
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


def _refuse_if_damaged(replica: Path, config: Config) -> None:
    report = verify_replica(replica, sorted(config.roots))
    if report.errors or report.differences:
        problems = report.errors + [f"{d.file}: {d.field}: expected {d.expected}, found "
                                    f"{d.found}" for d in report.differences[:10]]
        raise PromoteRefused(f"refusing to promote: the replica fails verification "
                             f"({len(report.differences)} difference(s)): " + "; ".join(problems)
                             + ". Let the origin resend it (verify --repair) first")


def _materialize(config: Config, replica: Path, result: PromoteResult) -> None:
    """Stage (copy with the UID gap written in), sync, rename into place, sync the renames."""
    targets = dict(config.roots)
    stage_name = f".promote-{result.origin}-{result.epoch}"
    tick = time.monotonic()
    staged = stage(replica, targets, result.users, stage_name, result.uid_gap)
    result.steps["copy"] = time.monotonic() - tick
    for user in staged:
        result.mailboxes += user.summary.mailboxes
        result.raised += user.summary.raised
        result.unsynced += user.summary.unsynced
    tick = time.monotonic()
    sync_filesystems(targets.values())
    result.steps["sync"] = time.monotonic() - tick
    tick = time.monotonic()
    backup = f".promote-backup-{result.origin}-{result.epoch}"
    for user in staged:
        result.moved_aside += [str(p) for p in swap_in(user.user, user.dirs, targets, backup)]
    clean_stage(targets.values(), stage_name)
    sync_filesystems(targets.values())
    result.steps["rename"] = time.monotonic() - tick
