"""Crash node a, promote its copy on node b, look at what b holds, bring a back: the loop the
sync-commit loss tests run hundreds of times.

`crash_a` kills a's daemon first (it is what must not get to ship anything more), then a's
Dovecot. `rejoin_a` brings a back as an operator would after a failover: with an epoch above
the fence b set (b accepts it again, and a's first connection resyncs b's copy from a's disk),
and the promote marker cleared so the next iteration's promote runs (and probes a) again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from replicator.dovecot.doveadm import fetch_body_hashes, fetch_flags
from replicator.replica.state import Fences
from replicator.testing.scenario import TwoNodes


class UserNotReplicated(AssertionError):
    """Nothing of the user had reached b when a died (only possible without sync commit)."""


class Failover:
    def __init__(self, nodes: TwoNodes) -> None:
        """b's Dovecot runs throughout (doveadm needs its auth service); each iteration
        promotes a user it has not served before."""
        self.nodes = nodes
        if not nodes.dovecot_b.running:
            nodes.dovecot_b.start()

    def crash_a(self) -> None:
        process = self.nodes.repl_a.process
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        self.nodes.dovecot_a.kill9()
        self.nodes.repl_a.kill9()

    def promote(self, user: str, *, wrap: list[str] | None = None) -> str:
        """`dovecot-replicator promote` on b for one user (inside b's network namespace when
        `wrap` says so, so its probe of a goes over the real link)."""
        result = subprocess.run(
            [*(wrap or []), sys.executable, "-m", "replicator", "promote", "--config",
             str(self.nodes.repl_b.config_path), "--origin", "a", "--users", user],
            capture_output=True, text=True, timeout=120)
        if result.returncode != 0 and "no such user" in result.stderr:
            raise UserNotReplicated(result.stderr.strip())
        if result.returncode != 0:
            raise AssertionError(f"promote failed ({result.returncode}): {result.stderr}")
        return result.stdout

    def bodies_on_b(self, user: str, mailbox: str = "INBOX") -> dict[int, str]:
        return fetch_body_hashes(self.nodes.dovecot_b.config_path, user, mailbox)

    def flags_on_b(self, user: str, mailbox: str = "INBOX") -> dict[int, frozenset[str]]:
        return fetch_flags(self.nodes.dovecot_b.config_path, user, mailbox)

    def rejoin_a(self) -> None:
        nodes = self.nodes
        fence = Fences(nodes.repl_b.state_dir / "fences.json").minimum("a")
        nodes.repl_a.state_dir.mkdir(parents=True, exist_ok=True)
        (nodes.repl_a.state_dir / "epoch").write_text(f"{max(fence, 1)}\n")
        marker = nodes.repl_b.state_dir / "promoted" / "a.json"
        marker.unlink(missing_ok=True)
        nodes.repl_a.start()
        nodes.dovecot_a.start()
        nodes.repl_a.barrier()


def body_bytes(user: str, index: int) -> bytes:
    """A small message whose body names its iteration (so two are never alike)."""
    return (f"From: t@example.org\r\nTo: {user}@example.org\r\nSubject: loss test {index}\r\n"
            f"\r\niteration {index} of the sync-commit loss test\r\n").encode()

