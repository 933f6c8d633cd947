"""What ownership does to this node's own disk and Dovecot: list its users, kick a user's
sessions, move a lost user's directories aside (never delete), and run the operator's hook."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from replicator.coordination.trees import user_digest
from replicator.coordination.view import Owner

log = logging.getLogger("replicator.coordination")


def local_users(roots: Mapping[str, Path]) -> set[str]:
    """User directories in this node's roots (names starting with '.' are ours or Dovecot's
    scratch, never users)."""
    users: set[str] = set()
    for root in roots.values():
        try:
            with os.scandir(root) as listing:
                users |= {e.name for e in listing
                          if not e.name.startswith(".") and e.is_dir(follow_symlinks=False)}
        except FileNotFoundError:
            continue
    return users


def kick(doveadm: Sequence[str], users: Iterable[str]) -> None:
    """End the users' IMAP/POP3 sessions here (`doveadm kick`): their next command must meet
    the new owner. One `doveadm who` first, so that only users with a session cost a kick
    (~20 ms each: 1 000 users kicked blindly would pause their commits for 20 s). A failure
    is logged: commits are refused for them anyway."""
    wanted = set(users)
    connected = _connected(doveadm)
    for user in sorted(wanted if connected is None else wanted & connected):
        try:
            result = subprocess.run([*doveadm, "kick", user], capture_output=True, text=True,
                                    timeout=10)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("doveadm kick %s failed: %s", user, exc)
            continue
        if result.returncode not in (0, 68):  # 68: EX_NOUSER (nobody to kick)
            log.warning("doveadm kick %s: exit %d: %s", user, result.returncode,
                        result.stderr.strip()[:200])


def _connected(doveadm: Sequence[str]) -> set[str] | None:
    """Users with a session here (`doveadm who -1`), or None when that cannot be told."""
    try:
        result = subprocess.run([*doveadm, "who", "-1"], capture_output=True, text=True,
                                timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    lines = result.stdout.splitlines()
    return {line.split()[0] for line in lines[1:] if line.split()}  # first line: the header


def quarantine(roots: Mapping[str, Path], user: str, area: Path) -> list[Path]:
    """Move `user`'s directories out of the roots into `area/<root>/` (kept for a merge,
    never deleted). Returns where they went."""
    moved: list[Path] = []
    for name, root in roots.items():
        source = root / user
        if not source.exists() and not source.is_symlink():
            continue
        target = area / name / user
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            os.rename(source, target)
        except OSError:  # state_dir on another filesystem than the root
            shutil.move(str(source), str(target))
        moved.append(target)
    return moved


def set_aside(roots: Mapping[str, Path], state_dir: Path, me: str, user: str,
              owner: Owner) -> tuple[bool, Path, list[Path]]:
    """Move the local copy of `user`, whom `owner` owns now, out of the roots into
    state_dir/quarantine/<kind>-<token>: `superseded` when it is the copy the new owner took
    (handed over by this node, or the digest the new owner recorded of its replica matches),
    else `diverged` (changes made here after the last replicated batch). Returns (superseded,
    the area, the directories moved)."""
    mine = user_digest(roots, user)
    clean = not mine or (owner.origin == me and
                         (owner.why == "switchover" or owner.tree == mine))
    area = _free_area(state_dir / "quarantine",
                      f"{'superseded' if clean else 'diverged'}-{owner.token}", roots, user)
    return clean, area, quarantine(roots, user, area)


def _free_area(base: Path, name: str, roots: Mapping[str, Path], user: str) -> Path:
    """base/<name>, or <name>.2, .3...: the first that holds nothing of `user` yet. The same
    user can be set aside twice under one token (any access on this node, a misrouted client
    or a delivery, recreates its directories), and a second move into the same place fails:
    it must never stop the coordinator."""
    area, copies = base / name, 1
    while any((area / root / user).exists() for root in roots):
        copies += 1
        area = base / f"{name}.{copies}"
    return area


def run_hook(hook: Path | None, why: str, old: str, new: str, users: list[str]) -> None:
    """`on_owner_change`: argv = hook, why (claim|failover|switchover), old owner, new owner;
    the users on standard input, one per line. Its failure is logged, never fatal."""
    if hook is None or not users:
        return
    started = time.monotonic()
    try:
        result = subprocess.run([str(hook), why, old or "-", new], input="\n".join(users) + "\n",
                                capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.error("on_owner_change hook %s failed: %s", hook, exc)
        return
    level = logging.INFO if result.returncode == 0 else logging.ERROR
    log.log(level, "on_owner_change %s %s %s %s (%d users): exit %d in %.2f s%s", hook, why,
            old or "-", new, len(users), result.returncode, time.monotonic() - started,
            f": {result.stderr.strip()[:300]}" if result.stderr.strip() else "")
