"""Real replicator daemons as separate processes (so tests can `kill -9` them), on loopback.

A `ReplicatorNode` writes its TOML config, starts `python -m replicator run`, and talks to it
over its control socket (status, and the BARRIER request that makes a test wait for
replication without sleeping).

Every node authenticates its peers as a real deployment must: by default all nodes made in one
test process share one pre-shared key (`TEST_PSK`, written 0600 into each node's workdir), so
nodes may listen on addresses other than loopback (network namespaces). `psk=None` leaves it
out, another key makes an impostor; `tls` takes the files `testing.certs.TestCA.issue` makes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from replicator.control import protocol
from replicator.control.server import request
from replicator.dovecot.instance import free_port
from replicator.testing.lifetime import tied_to_us

TEST_PSK = secrets.token_hex(32).encode()  # shared by every node this process starts


@dataclass
class PeerSpec:
    id: str
    port: int
    transport: str = "tcp"
    host: str = "127.0.0.1"


@dataclass
class ReplicatorNode:
    workdir: Path
    node_id: str
    roots: Mapping[str, Path]
    port: int = field(default_factory=free_port)
    peers: list[PeerSpec] = field(default_factory=list)
    replication: Mapping[str, Any] = field(default_factory=dict)
    tls: Mapping[str, Path] | None = None
    psk: bytes | None = TEST_PSK
    auth: Mapping[str, Any] = field(default_factory=dict)  # more [auth] keys (hello_timeout...)
    ram: Path | None = None  # replica_dir somewhere else (tmpfs) than under workdir
    host: str = "127.0.0.1"  # listen address
    wrap: list[str] = field(default_factory=list)  # e.g. ["ip", "netns", "exec", "ns"]
    coordination: Mapping[str, Any] = field(default_factory=dict)  # [coordination] keys
    process: subprocess.Popen[bytes] | None = None

    @property
    def config_path(self) -> Path:
        return self.workdir / f"{self.node_id}.toml"

    @property
    def replica_dir(self) -> Path:
        return self.ram if self.ram is not None else self.workdir / "replica"

    @property
    def state_dir(self) -> Path:
        return self.workdir / "state"

    @property
    def control_socket(self) -> Path:
        return self.workdir / "control.sock"

    @property
    def log_path(self) -> Path:
        return self.workdir / "daemon.log"

    def replica_of(self, origin: str, root: str) -> Path:
        return self.replica_dir / origin / root

    def write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        lines = ["[node]", f'id = "{self.node_id}"', f'listen = "{self.host}:{self.port}"',
                 f'replica_dir = "{self.replica_dir}"', f'state_dir = "{self.state_dir}"',
                 f'control_socket = "{self.control_socket}"', "[roots]"]
        lines += [f'{name} = "{path}"' for name, path in self.roots.items()]
        for peer in self.peers:
            lines += ["[[peers]]", f'id = "{peer.id}"', f'address = "{peer.host}:{peer.port}"',
                      f'transport = "{peer.transport}"']
        if self.replication:
            lines.append("[replication]")
            lines += [f"{key} = {json.dumps(value)}" for key, value in self.replication.items()]
        if self.tls:
            lines.append("[tls]")
            lines += [f'{key} = "{value}"' for key, value in self.tls.items()]
        lines += self._auth_lines()
        if self.coordination:
            lines.append("[coordination]")
            lines += [f"{key} = {json.dumps(value)}" for key, value in self.coordination.items()]
        self.config_path.write_text("\n".join(lines) + "\n")
        return self.config_path

    @property
    def psk_path(self) -> Path:
        return self.workdir / "psk"

    def _auth_lines(self) -> list[str]:
        if self.psk is None and not self.auth:
            return []
        lines = ["[auth]"]
        if self.psk is not None:
            self.psk_path.unlink(missing_ok=True)
            descriptor = os.open(self.psk_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "wb") as f:
                f.write(self.psk + b"\n")
            lines.append(f'psk_file = "{self.psk_path}"')
        lines += [f"{key} = {json.dumps(value)}" for key, value in self.auth.items()]
        return lines

    def start(self, timeout: float = 30.0) -> None:
        self.write_config()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                tied_to_us([*self.wrap, sys.executable, "-m", "replicator", "run",
                            "--config", str(self.config_path)]),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"daemon {self.node_id} exited ({self.process.returncode}):\n"
                                   f"{self.log_text()[-3000:]}")
            try:
                self.status()
                return
            except (OSError, TimeoutError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        if self.running():
            assert self.process is not None
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout)

    def kill9(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def ask(self, line: str, timeout: float = 10.0) -> str:
        return asyncio.run(request(self.control_socket, line, timeout))

    def status(self) -> dict[str, Any]:
        reply = self.ask("STATUS\t1", timeout=5.0).split("\t", 2)
        data: dict[str, Any] = json.loads(protocol.unescape(reply[2]))
        return data

    def barrier(self, timeout: float = 60.0) -> int:
        """Block until every change on this node's disk is acknowledged by every peer."""
        reply = self.ask(f"BARRIER\t1\t{int(timeout * 1000)}", timeout + 5).split("\t")
        if reply[0] != "OK":
            raise AssertionError(f"barrier on {self.node_id} failed: "
                                 f"{protocol.unescape(reply[-1])}\n{self.log_text()[-3000:]}")
        return int(reply[2])


def pair(workdir: Path, roots_a: Mapping[str, Path], roots_b: Mapping[str, Path],
         **options: Any) -> tuple[ReplicatorNode, ReplicatorNode]:
    """Two nodes a and b that replicate to each other over TCP on 127.0.0.1."""
    a = ReplicatorNode(workdir / "repl-a", "a", roots_a, **options)
    b = ReplicatorNode(workdir / "repl-b", "b", roots_b, **options)
    a.peers, b.peers = [PeerSpec("b", b.port)], [PeerSpec("a", a.port)]
    return a, b


def stop_all(nodes: Sequence[ReplicatorNode]) -> None:
    for node in nodes:
        if node.running():
            node.kill9()
