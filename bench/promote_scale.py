"""Promote and verify at scale: 1, 100 and 10 000 mailboxes (one message each), node a killed
after replication, then `verify --local` and `promote` timed on node b."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from replicator.testing.scenario import TwoNodes, two_nodes

MESSAGE = b"Subject: scale\r\n\r\none message per mailbox\r\n"


def _fill(nodes: TwoNodes, user: str, count: int) -> None:
    client = nodes.dovecot_a.imap(user)
    for index in range(count):
        name = "INBOX" if index == 0 else f"box{index // 100}/m{index}"
        if name != "INBOX":
            client.create_folder(name)
        client.append(name, MESSAGE)
    client.logout()


def _cli(nodes: TwoNodes, *args: str) -> tuple[float, str]:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "replicator", *args, "--config",
                             str(nodes.repl_b.config_path), "--origin", "a"],
                            capture_output=True, text=True, check=True)
    return time.monotonic() - started, result.stdout


def promote_at_scale(mailboxes: int, mail_format: str = "maildir") -> dict[str, Any]:
    users = tuple(f"u{i}" for i in range(1, 11)) if mailboxes >= 100 else ("u1",)
    per_user = max(1, mailboxes // len(users))
    with two_nodes(mail_format, users) as nodes:  # type: ignore[arg-type]
        started = time.monotonic()
        with ThreadPoolExecutor(len(users)) as pool:
            list(pool.map(lambda u: _fill(nodes, u, per_user), users))
        fill = time.monotonic() - started
        nodes.dovecot_a.wait_idle()
        nodes.repl_a.barrier(timeout=600)
        nodes.dovecot_a.kill9()
        nodes.repl_a.kill9()
        verify_s, out = _cli(nodes, "verify", "--local", "--json")
        verify = json.loads(out)
        promote_s, out = _cli(nodes, "promote", "--json")
        promoted = json.loads(out)
        return {"mailboxes": promoted["mailboxes"], "users": len(users), "format": mail_format,
                "fill_s": fill, "verify_s": verify_s, "verify_inner_s": verify["seconds"],
                "verify_bytes": verify["bytes_read"], "verify_files": verify["files"],
                "promote_s": promote_s, "promote_inner_s": promoted["seconds"],
                "steps": promoted["steps"]}


if __name__ == "__main__":
    for n in (int(a) for a in sys.argv[1:] or ["1", "100"]):
        print(json.dumps(promote_at_scale(n)))
