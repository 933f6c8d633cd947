"""Ask Dovecot itself what a replica holds, without letting it change the replica.

Dovecot cannot open an index read-only (opening a mailbox syncs it), so the replica's roots are
copied to a scratch directory and a throwaway configuration (no listeners, its own base_dir,
a static userdb owning the files) points doveadm at the copy. The mail location is the
operator's own, in 2.3's `driver:path` form without INDEX/CONTROL, which are added to point at
the copy (on 2.4 it is written as the settings that replaced `mail_location`).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

from replicator.dovecot.doveadm import STATUS_FIELDS, DoveadmError, MailboxStatus
from replicator.dovecot.instance_conf import location_settings, preamble
from replicator.dovecot.version import installed


def _config(scratch: Path, mail_location: str, uid: int, gid: int) -> Path:
    conf = scratch / "dovecot.conf"
    conf.write_text("\n".join([
        *preamble(),
        f"base_dir = {scratch}/run",
        f"state_dir = {scratch}/state",
        f"instance_name = verify-{scratch.name}",
        f"log_path = {scratch}/dovecot.log",
        "protocols = none",
        "ssl = no",
        f"first_valid_uid = {uid}",
        f"mail_uid = {uid}",
        f"mail_gid = {gid}",
        *location_settings(mail_location, scratch / "index", scratch / "control"),
        "namespace inbox {\n  inbox = yes\n  separator = /\n}",
    ]) + "\n")
    return conf


def _status(conf: Path, scratch: Path, user: str) -> dict[str, MailboxStatus]:
    """doveadm without -u: no auth server runs, so the user comes from USER/HOME, and Dovecot
    drops to mail_uid itself."""
    args = ("-f", "tab", "mailbox", "status", *installed().doveadm_without_userdb,
            " ".join(STATUS_FIELDS), "*")
    env = {"USER": user, "HOME": str(scratch / "home" / user), "PATH": "/usr/bin:/bin"}
    res = subprocess.run(["doveadm", "-c", str(conf), *args], capture_output=True, text=True,
                         env=env, timeout=120, stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        raise DoveadmError(args, res.returncode, res.stderr)
    rows = [line.split("\t") for line in res.stdout.splitlines()[1:] if line]
    return {row[0]: MailboxStatus(*(int(v) for v in row[1:5])) for row in rows}


def replica_status(index_root: Path, control_root: Path, mail_location: str,
                   users: Iterable[str]) -> dict[str, dict[str, MailboxStatus]]:
    """user -> mailbox -> status as Dovecot reports it for a copy of the given roots."""
    scratch = Path(tempfile.mkdtemp(prefix="dr-verify-"))
    scratch.chmod(0o711)  # Dovecot reads the copy as the mail user
    try:
        for name, source in (("index", index_root), ("control", control_root)):
            if source.is_dir():
                subprocess.run(["cp", "-a", "--", str(source), str(scratch / name)], check=True)
            else:
                (scratch / name).mkdir()
        owner = index_root.stat()
        conf = _config(scratch, mail_location, owner.st_uid, owner.st_gid)
        return {user: _status(conf, scratch, user) for user in users}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
