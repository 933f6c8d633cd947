"""Test hosts in network namespaces: two namespaces joined by a veth pair, and nftables rules
that cut the link or drop a share of its packets. Everything created here is removed by
`close()`; nothing leaves the machine (the addresses are private to the pair)."""

from __future__ import annotations

import itertools
import os
import subprocess
from dataclasses import dataclass, field

_counter = itertools.count()


def _run(*args: str) -> None:
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {result.stderr.strip()}")


@dataclass
class Host:
    name: str        # the namespace
    address: str     # its end of the veth pair
    device: str

    def exec(self, *command: str) -> list[str]:
        """A command line that runs `command` inside this host's namespace."""
        return ["ip", "netns", "exec", self.name, *command]

    def nft(self, script: str) -> None:
        result = subprocess.run(self.exec("nft", "-f", "-"), input=script, text=True,
                                capture_output=True)
        if result.returncode != 0:
            raise RuntimeError(f"nft in {self.name}: {result.stderr.strip()}")


@dataclass
class HostPair:
    """Two namespaces with one link between them: `cut()`, `heal()`, `lossy(percent)`."""

    a: Host
    b: Host
    _tables: set[str] = field(default_factory=set)

    @classmethod
    def create(cls) -> HostPair:
        tag = f"dr{os.getpid() % 100000}x{next(_counter)}"
        index = next(_counter) % 200 + 10
        a = Host(f"{tag}a", f"10.231.{index}.1", f"{tag}a0")
        b = Host(f"{tag}b", f"10.231.{index}.2", f"{tag}b0")
        for host in (a, b):
            _run("ip", "netns", "add", host.name)
        _run("ip", "link", "add", a.device, "netns", a.name, "type", "veth", "peer", "name",
             b.device, "netns", b.name)
        for host in (a, b):
            _run(*host.exec("ip", "addr", "add", f"{host.address}/30", "dev", host.device))
            _run(*host.exec("ip", "link", "set", host.device, "up"))
            _run(*host.exec("ip", "link", "set", "lo", "up"))
        return cls(a, b)

    def cut(self) -> None:
        """Drop every packet between the two hosts, both ways (a partition)."""
        for host in (self.a, self.b):
            host.nft(f"table inet drcut {{\n"
                     f"  chain in {{ type filter hook input priority 0; "
                     f"iifname {host.device} drop; }}\n"
                     f"  chain out {{ type filter hook output priority 0; "
                     f"oifname {host.device} drop; }}\n}}\n")

    def heal(self) -> None:
        for host in (self.a, self.b):
            subprocess.run(host.exec("nft", "delete", "table", "inet", "drcut"),
                           capture_output=True)

    def lossy(self, percent: int, host: Host | None = None) -> None:
        """Drop `percent` % of the packets arriving at `host` (default b) at random."""
        target = host or self.b
        target.nft(f"table inet drloss {{\n"
                   f"  chain in {{ type filter hook input priority 0; "
                   f"iifname {target.device} numgen random mod 100 < {percent} drop; }}\n}}\n")

    def close(self) -> None:
        for host in (self.a, self.b):
            subprocess.run(["ip", "netns", "del", host.name], capture_output=True)


@dataclass
class Star:
    """One center namespace linked to several leaves (a node with several peers)."""

    center: list[Host]   # the center's end of each link (same namespace)
    leaves: list[Host]
    pairs: list[HostPair]

    @classmethod
    def create(cls, leaves: int) -> Star:
        tag = f"dr{os.getpid() % 100000}s{next(_counter)}"
        center_ns = f"{tag}c"
        _run("ip", "netns", "add", center_ns)
        made = cls([], [], [])
        for index in range(leaves):
            net = next(_counter) % 200 + 10
            center = Host(center_ns, f"10.232.{net}.1", f"{tag}c{index}")
            leaf = Host(f"{tag}l{index}", f"10.232.{net}.2", f"{tag}l{index}0")
            _run("ip", "netns", "add", leaf.name)
            _run("ip", "link", "add", center.device, "netns", center.name, "type", "veth",
                 "peer", "name", leaf.device, "netns", leaf.name)
            for host in (center, leaf):
                _run(*host.exec("ip", "addr", "add", f"{host.address}/30", "dev", host.device))
                _run(*host.exec("ip", "link", "set", host.device, "up"))
                _run(*host.exec("ip", "link", "set", "lo", "up"))
            made.center.append(center)
            made.leaves.append(leaf)
            made.pairs.append(HostPair(center, leaf))
        return made

    def close(self) -> None:
        for name in {h.name for h in self.center + self.leaves}:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
