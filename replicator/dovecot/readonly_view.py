"""Ask Dovecot itself what a replica holds, without letting it change the replica.

Dovecot cannot open an index read-only (opening a mailbox syncs it), so the replica's roots are
copied to a scratch directory and a throwaway configuration (no listeners, its own base_dir,
a static userdb owning the files) points doveadm at the copy. `mail_location` is the
operator's own, without INDEX/CONTROL, which are added to point at the copy.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

from replicator.dovecot.doveadm import MailboxStatus, mailbox_status


def _config(scratch: Path, mail_location: str, uid: int, gid: int) -> Path:
    conf = scratch / "dovecot.conf"
    conf.write_text("\n".join([
        f"base_dir = {scratch}/run",
        f"state_dir = {scratch}/state",
        f"instance_name = verify-{scratch.name}",
        f"log_path = {scratch}/dovecot.log",
        "protocols = none",
        "ssl = no",
        f"first_valid_uid = {min(uid, 1) if uid == 0 else uid}",
        f"mail_location = {mail_location}:INDEX={scratch}/index/%u:CONTROL={scratch}/control/%u",
        "namespace inbox {\n  inbox = yes\n  separator = /\n}",
        f"userdb {{\n  driver = static\n  args = uid={uid} gid={gid} home={scratch}/home/%u\n}}",
        "passdb {\n  driver = static\n  args = nopassword=y\n}",
    ]) + "\n")
    return conf


def replica_status(index_root: Path, control_root: Path, mail_location: str,
                   users: Iterable[str]) -> dict[str, dict[str, MailboxStatus]]:
    """user -> mailbox -> status as Dovecot reports it for a copy of the given roots."""
    scratch = Path(tempfile.mkdtemp(prefix="dr-verify-"))
    try:
        for name, source in (("index", index_root), ("control", control_root)):
            if source.is_dir():
                subprocess.run(["cp", "-a", "--", str(source), str(scratch / name)], check=True)
            else:
                (scratch / name).mkdir()
        owner = index_root.stat()
        conf = _config(scratch, mail_location, owner.st_uid, owner.st_gid)
        return {user: mailbox_status(conf, user) for user in users}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
