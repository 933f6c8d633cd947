"""Clients find the owner: a Dovecot proxy in front of the pair, whose passwd-file the
`on_owner_change` hook shipped in systemd/ rewrites, sends each login to the user's owner,
before and after an automatic failover. The proxy configuration README shows is this one."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from replicator.dovecot.instance import DovecotInstance, DovecotLayout
from replicator.dovecot.instance_conf import passwd_file_passdb
from replicator.testing.etcd import EtcdCluster
from replicator.testing.failover import body_bytes
from replicator.testing.imap import parse_appenduid
from replicator.testing.scenario import two_nodes
from tests.integration.daemon_support import coordination, poll, wait_serving

pytestmark = pytest.mark.integration
HOOK = Path(__file__).resolve().parents[2] / "systemd" / "on-owner-change-proxy-map"



def proxy_config(proxy_map: Path) -> str:
    """What README shows: the proxy's only passdb is the map the hook keeps."""
    return passwd_file_passdb(proxy_map, "proxy-map") + "\nlogin_trusted_networks = 127.0.0.0/8\n"


def wrapper(path: Path, proxy_map: Path, hosts: Path) -> Path:
    """How an operator sets the hook's environment (systemd: Environment= lines)."""
    path.write_text(f"#!/bin/sh\nPROXY_MAP={proxy_map} NODE_HOSTS={hosts} exec {HOOK} \"$@\"\n")
    path.chmod(0o755)
    return path



def wait_map(proxy_map: Path, user: str, port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    want = f"port={port}"
    while not any(line.startswith(f"{user}:") and line.endswith(want)
                  for line in (proxy_map.read_text().splitlines() if proxy_map.exists() else [])):
        assert time.monotonic() < deadline, proxy_map.read_text() if proxy_map.exists() else ""
        time.sleep(0.05)


def test_a_proxy_follows_the_owner_through_a_failover(tmp_path: Path, etcd: EtcdCluster) -> None:
    proxy_map, hosts = tmp_path / "proxy-users", tmp_path / "node-hosts"
    hook = wrapper(tmp_path / "hook", proxy_map, hosts)
    settings = coordination(etcd.endpoints, on_owner_change=str(hook))
    with two_nodes("mdbox", ("u1",), base=tmp_path / "n", sync_commit="fail",
                   coordination=settings) as nodes:
        hosts.write_text(f"a 127.0.0.1 {nodes.dovecot_a.imap_port}\n"
                         f"b 127.0.0.1 {nodes.dovecot_b.imap_port}\n")
        first = nodes.dovecot_a.imap("u1")
        validity, uids = parse_appenduid(first.append("INBOX", body_bytes("u1", 1)))
        first.logout()
        wait_map(proxy_map, "u1", nodes.dovecot_a.imap_port)  # the claim ran the hook on a
        proxy = DovecotInstance(tmp_path / "proxy", "proxy",
                                DovecotLayout(*(tmp_path / "proxy" / d for d in
                                                ("mail", "index", "control")), "mdbox"),
                                (), extra_config=proxy_config(proxy_map))
        proxy.start()
        try:
            client = proxy.imap("u1")
            assert parse_appenduid(client.append("INBOX", body_bytes("u1", 2))) == \
                (validity, [uids[0] + 1])
            client.logout()
            nodes.dovecot_a.kill9()
            nodes.repl_a.kill9()
            wait_serving(nodes.repl_b, "u1")
            wait_map(proxy_map, "u1", nodes.dovecot_b.imap_port)  # failover ran it on b
            client = proxy.imap("u1")  # the same address, now answered by b
            assert parse_appenduid(client.append("INBOX", body_bytes("u1", 3))) == \
                (validity, [uids[0] + 2])
            client.logout()
        finally:
            proxy.kill9()
        # the daemon logs the hook's end after the hook wrote the map: wait for the line
        poll(lambda: "on_owner_change" in nodes.repl_b.log_text(), "b to log the hook")
