"""Writes golden files: what the installed Dovecot leaves on disk for one user, and what its own
doveadm says about those files, for maildir, mdbox and sdbox.

    python -m tests.golden.capture          # as root, on the Dovecot whose files to capture

writes `tests/golden/dovecot-<2.3|2.4>/<format>/` with the user's `mail/`, `index/` and
`control/` trees and `oracle.json`. Files of both versions are committed, so every machine
checks our readers against both (tests/unit/test_golden_formats.py) and opens the other
version's files with its own Dovecot (tests/integration/test_golden_upgrade.py): a pair in the
middle of an upgrade replicates 2.3's files to a 2.4 node and back.

The workload is fixed (appends, flags, a keyword, an expunge, a second mailbox, a log rotation
and an index rewrite under the churn settings); message bodies carry no dates or hostnames of
their own, but maildir file names and UIDVALIDITY are Dovecot's, so a new capture differs in
bytes and the oracle is rewritten with it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from replicator.dovecot.doveadm import fetch_all_flags, fetch_body_hashes, mailbox_status
from replicator.dovecot.instance import DovecotInstance, DovecotLayout
from replicator.dovecot.instance_conf import MAIL_FORMATS, MailFormat
from replicator.dovecot.version import installed
from tests.integration.doveadm_dump import dump_index, dump_log, raw_index_copy

USER = "u1"
BOXES = ("INBOX", "Work")
HERE = Path(__file__).resolve().parent


def golden_dir(series: str, mail_format: str) -> Path:
    return HERE / f"dovecot-{series}" / mail_format


def mailbox_workload(inst: DovecotInstance) -> None:
    """Two mailboxes, appends, system flags, a keyword on a kept and on an expunged message,
    an expunge (also the live format tests' workload)."""
    c = inst.imap(USER)
    c.create_folder("Work")
    for i in range(6):
        c.append("INBOX", b"Subject: m%d\r\n\r\nbody %d\r\n" % (i, i))
        c.append("Work", b"Subject: w%d\r\n\r\nwork %d\r\n" % (i, i))
    c.select_folder("INBOX")
    c.add_flags([1, 2], [b"\\Seen"])
    c.add_flags([3], [b"\\Deleted", b"$Label1"])
    c.expunge()
    c.add_flags([4], [b"$Label1"])
    c.logout()


def rotate_logs(inst: DovecotInstance) -> None:
    """Keeps syncing INBOX until some mailbox log has been rotated to .log.2 (the churn
    settings rotate logs older than 1 s; their 1 s mail_index_log2_max_age deletes a .log.2 at
    a later sync, so with them call this last before stopping Dovecot)."""
    c = inst.imap(USER)
    c.select_folder("INBOX")
    deadline = time.monotonic() + 20
    while not list(inst.layout.index_root.rglob("*.log.2")):
        if time.monotonic() > deadline:
            raise RuntimeError("no log rotation within 20 s")
        c.add_flags([1], [b"\\Flagged"])
        c.remove_flags([1], [b"\\Flagged"])
        c.noop()
        time.sleep(0.05)
    c.logout()


def _workload(inst: DovecotInstance) -> None:
    mailbox_workload(inst)
    inst.doveadm("force-resync", "-u", USER, "*")  # writes mdbox's map index too
    rotate_logs(inst)


def _oracle(inst: DovecotInstance, scratch: Path) -> dict[str, Any]:
    """What doveadm says: per mailbox status, flags and body hashes; per index file its own
    header (dumped beside a log cut at its head offset) and per log its header and records."""
    conf = inst.config_path
    status = mailbox_status(conf, USER)
    flags = fetch_all_flags(conf, USER)
    oracle: dict[str, Any] = {
        "dovecot": str(installed()), "user": USER, "format": inst.layout.mail_format,
        "status": {b: [s.messages, s.uidnext, s.uidvalidity, s.highestmodseq]
                   for b, s in status.items()},
        "flags": {b: {str(u): sorted(f) for u, f in flags.get(b, {}).items()} for b in status},
        "bodies": {b: {str(u): h for u, h in fetch_body_hashes(conf, USER, b).items()}
                   for b in status},
        "index": {}, "log": {}, "replay": {},
    }
    inst.stop()
    root = inst.layout.index_root / USER
    for n, index in enumerate(sorted(root.rglob("dovecot.index")) +
                              sorted(root.rglob("dovecot.map.index"))):
        copy = raw_index_copy(index, scratch / f"raw{n}")
        if copy is not None:
            dump = dump_index(copy)
            oracle["index"][index.relative_to(root).as_posix()] = {
                "header": dump.header, "extensions": dump.extensions, "cache": dump.cache,
                "records": dump.records}
    for log in sorted(p for p in root.rglob("*.log*") if p.name.endswith((".log", ".log.2"))):
        header, records = dump_log(log)
        oracle["log"][log.relative_to(root).as_posix()] = {"header": header,
                                                           "records": records}
    for box_dir in sorted({p.parent for p in root.rglob("dovecot.index.log")}):
        if box_dir.name != "storage":
            head = dump_index(box_dir).header
            oracle["replay"][box_dir.relative_to(root).as_posix()] = [
                int(head["next uid"]), int(head["uid validity"])]
    return oracle


def capture(mail_format: MailFormat, work: Path) -> Path:
    base = work / mail_format
    layout = DovecotLayout(base / "mail", base / "index", base / "control", mail_format)
    # churn, but a rotated log is kept (the default 2 days) so the oracle's own syncs keep it
    inst = DovecotInstance(base / "node", "golden", layout, [USER], churn=True,
                           extra_config="mail_index_log2_max_age = 2d")
    inst.start()
    try:
        _workload(inst)
        inst.wait_idle()
        oracle = _oracle(inst, base / "scratch")
    finally:
        inst.stop()
    dest = golden_dir(installed().series, mail_format)
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for name, root in (("mail", layout.mail_root), ("index", layout.index_root),
                       ("control", layout.control_root)):
        shutil.copytree(root / USER, dest / name, symlinks=True,
                        ignore=shutil.ignore_patterns("*.lock", "dovecot.index.log.*.tmp"))
    oracle["dirs"] = {name: sorted(p.relative_to(dest / name).as_posix()
                                   for p in (dest / name).rglob("*") if p.is_dir())
                      for name in ("mail", "index", "control")}  # git keeps no empty ones
    (dest / "oracle.json").write_text(json.dumps(oracle, indent=1, sort_keys=True) + "\n")
    return dest


def main() -> int:
    if os.geteuid() != 0:
        print("run as root: Dovecot runs the mail processes as the mail user", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="golden-") as work:
        os.chmod(work, 0o755)
        for mail_format in MAIL_FORMATS:
            print(f"Dovecot {installed()}: {mail_format} -> {capture(mail_format, Path(work))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
