"""free_port: the ports tests give daemons cannot be taken by outgoing connections meanwhile."""

from __future__ import annotations

import random
import socket
from pathlib import Path

import pytest

from replicator.dovecot.instance import free_port


def test_ports_lie_below_the_ephemeral_range_are_bindable_and_never_repeat() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(1024 <= port < low for port in ports)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", ports[-1]))


def test_a_port_someone_listens_on_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        taken = listener.getsockname()[1]
        listener.listen()
        real = random.SystemRandom.randrange
        offered: list[int] = []

        def taken_first(self: random.SystemRandom, start: int, stop: int) -> int:
            offered.append(taken if len(offered) < 2 else real(self, start, stop))
            return offered[-1]

        monkeypatch.setattr(random.SystemRandom, "randrange", taken_first)
        port = free_port()
        assert offered[:2] == [taken, taken] and port != taken
