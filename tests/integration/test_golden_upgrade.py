"""A pair in the middle of an upgrade: a node's replica of a peer that runs the other Dovecot
version is promoted, and this node's Dovecot serves it.

The replica holds the peer's files byte for byte, so the question is only whether this Dovecot
opens what the other version wrote, after promote's UID gap was written into it. The files are
tests/golden/dovecot-<other>/ (written by the real 2.3.19 or 2.4.1, with that version's
doveadm's view in oracle.json): on a 2.4 node this is the upgrade direction (a 2.3 origin
promoted on 2.4), on a 2.3 node the way back. Dovecot's upgrade notes ask for an in-place
upgrade from the latest 2.3 and change no index format (2.3.19 and 2.4.1 both write index 7.3,
log 1.3, cache 1.1, uidlist 3: tests/unit/test_golden_formats.py), and so the answer measured
here is: it works, with every message, UID, flag, keyword and UIDVALIDITY, and no error in the
log.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from replicator.dovecot.doveadm import fetch_all_flags, fetch_body_hashes, mailbox_status
from replicator.dovecot.instance import MAIL_GID, MAIL_UID, DovecotInstance, DovecotLayout
from replicator.dovecot.instance_conf import MailFormat
from replicator.dovecot.version import installed
from replicator.promote.materialize import stage, swap_in
from replicator.testing.imap import parse_appenduid

pytestmark = pytest.mark.integration
GOLDEN = Path(__file__).resolve().parents[1] / "golden"
GAP = 1000


def other_series() -> str:
    return "2.3" if installed().settings_v24 else "2.4"


def lay_out(case: Path, oracle: dict[str, Any], roots: dict[str, Path], user: str) -> None:
    """The golden trees (mail, index, control) under `roots` (git kept no empty directories:
    they are listed in the oracle), owned by the mail user as Dovecot left them."""
    for name, root in roots.items():
        shutil.copytree(case / name, root / user)
        for rel in oracle["dirs"][name]:
            (root / user / rel).mkdir(parents=True, exist_ok=True)
        for top in (root, root / user):
            os.chown(top, MAIL_UID, MAIL_GID)
        for dirpath, dirs, files in os.walk(root / user):
            for name_ in dirs + files:
                os.chown(os.path.join(dirpath, name_), MAIL_UID, MAIL_GID)


@pytest.mark.parametrize("mail_format", ["maildir", "mdbox", "sdbox"])
def test_the_other_versions_replica_is_promoted_and_served(tmp_path: Path,
                                                            mail_format: MailFormat) -> None:
    case = GOLDEN / f"dovecot-{other_series()}" / mail_format
    oracle = json.loads((case / "oracle.json").read_text())
    user = oracle["user"]
    layout = DovecotLayout(tmp_path / "mail", tmp_path / "index", tmp_path / "control",
                           mail_format)
    replica = tmp_path / "replica"
    for root in (layout.mail_root, layout.index_root, layout.control_root):
        root.mkdir(parents=True)
        os.chown(root, MAIL_UID, MAIL_GID)
    # the golden index and control trees as a replica of them, promoted the way promote does
    lay_out(case, oracle, {"mail": layout.mail_root, "index": replica / "index",
                           "control": replica / "control"}, user)
    targets = {"index": layout.index_root, "control": layout.control_root}
    [staged] = stage(replica, targets, [user], ".promote-golden", GAP)
    assert staged.summary.failures == [] and staged.summary.raised == len(oracle["status"])
    assert swap_in(user, staged.dirs, targets, ".promote-backup") == []

    inst = DovecotInstance(tmp_path / "node", "b", layout, [user])
    inst.start()
    try:
        status = mailbox_status(inst.config_path, user)
        assert {b: (s.messages, s.uidnext, s.uidvalidity) for b, s in status.items()} == {
            b: (messages, uidnext + GAP, uidvalidity)
            for b, (messages, uidnext, uidvalidity, _modseq) in oracle["status"].items()}
        flags = fetch_all_flags(inst.config_path, user)
        assert {b: {str(u): sorted(f) for u, f in flags.get(b, {}).items()} for b in status} \
            == oracle["flags"]
        assert {b: {str(u): h for u, h in fetch_body_hashes(inst.config_path, user, b).items()}
                for b in status} == oracle["bodies"]
        client = inst.imap(user)
        for box, (_messages, uidnext, uidvalidity, _modseq) in oracle["status"].items():
            reply = client.append(box, b"Subject: after the upgrade\r\n\r\nnew\r\n")
            assert parse_appenduid(reply) == (uidvalidity, [uidnext + GAP])
        client.logout()
        inst.wait_idle()
        assert inst.error_lines() == []
    finally:
        inst.stop()
    print(f"\nDovecot {installed()} served the {other_series()} replica ({mail_format}): "
          f"{sum(v[0] for v in oracle['status'].values())} messages, UIDs and flags intact")
