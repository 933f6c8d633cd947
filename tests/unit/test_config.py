"""Configuration errors: one clear line naming file, key and problem; exit 2, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from replicator.config import load_config
from replicator.errors import ConfigError


def write(tmp_path: Path, body: str) -> Path:
    for name in ("index", "control", "replica", "state", "index/sub"):
        (tmp_path / name).mkdir(exist_ok=True)
    path = tmp_path / "node.toml"
    path.write_text(body.replace("TMP", str(tmp_path)))
    return path


GOOD = """
[node]
id = "a"
listen = "127.0.0.1:7801"
replica_dir = "TMP/replica"
state_dir = "TMP/state"
[roots]
index = "TMP/index"
control = "TMP/control"
[[peers]]
id = "b"
address = "127.0.0.1:7802"
"""


def test_good_config_loads_with_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    assert config.node_id == "a" and config.listen.port == 7801
    assert set(config.roots) == {"index", "control"}
    assert [p.id for p in config.peers] == ["b"] and config.peers[0].transport == "auto"
    assert str(config.control_socket) == "/run/dovecot-replicator/control.sock"
    assert config.tuning.sync_quorum == 1


BAD = [
    (GOOD.replace('id = "a"', 'id = "a"\ncolour = "red"'), r"\[node.colour\]: unknown key"),
    (GOOD.replace('[[peers]]', '[peers]').replace('id = "b"\n', ''),
     r"\[peers\]: must be an array of tables"),
    (GOOD.replace('listen = "127.0.0.1:7801"', 'listen = "localhost"'),
     r"\[node.listen\]: 'localhost' is not host:port"),
    (GOOD.replace('"127.0.0.1:7802"', '"127.0.0.1:99999"'), r"port 99999 is outside"),
    (GOOD.replace('id = "b"', 'id = "a"'), r"peer id 'a' is this node's own id"),
    (GOOD + '[[peers]]\nid = "b"\naddress = "127.0.0.1:7803"\n', r"duplicate peer id 'b'"),
    (GOOD.replace('control = "TMP/control"', 'control = "TMP/index/sub"'),
     r"roots 'control' .* and 'index' .* overlap|roots 'index' .* and 'control' .* overlap"),
    (GOOD.replace('control = "TMP/control"', 'control = "TMP/missing"'),
     r"\[roots.control\]: .*missing does not exist"),
    (GOOD.replace('index = "TMP/index"\ncontrol = "TMP/control"\n', ''), r"no roots configured"),
    (GOOD.replace('replica_dir = "TMP/replica"', 'replica_dir = "TMP/index/replica"'),
     r"root 'index' .* overlaps replica_dir"),
    (GOOD.replace('replica_dir = "TMP/replica"', 'replica_dir = "relative"'),
     r"must be an absolute path"),
    (GOOD + '[replication]\nsync_quorum = 2\n', r"sync_quorum = 2 but only 1 peer"),
    (GOOD.replace('address = "127.0.0.1:7802"', 'address = "127.0.0.1:7802"\ntransport = "ib"'),
     r"'ib' is not one of auto, rdma, tcp"),
    ("[node\nid=", r"not valid TOML"),
    (GOOD + '[replication]\ntrailing_delay = -0.01\n', r"trailing_delay.*at least 0"),
    (GOOD + '[replication]\ntrailing_delay = nan\n', r"trailing_delay.*finite number"),
    (GOOD + '[replication]\nrescan_interval = inf\n', r"rescan_interval.*finite number"),
    (GOOD + '[replication]\ntrailing_delay = "50ms"\n', r"trailing_delay.*must be a number"),
    (GOOD + '[replication]\nlink_compression = "lz4"\n', r"'lz4' is not one of zstd, off"),
    (GOOD + '[replication]\nlink_compression = true\n',
     r"link_compression\]: must be a non-empty string"),
]


@pytest.mark.parametrize(("body", "message"), BAD)
def test_bad_config_is_one_clear_error(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_config(write(tmp_path, body))
    assert "\n" not in str(info.value)


def test_cli_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('id = "b"', 'id = "a"'))
    proc = subprocess.run([sys.executable, "-m", "replicator", "run", "--config", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "peer id 'a' is this node's own id" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_names_a_missing_config_file(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "replicator", "run", "--config",
                           str(tmp_path / "nope.toml")], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    assert "nope.toml does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_rdma_without_an_rdma_transport_is_one_clear_line(tmp_path: Path) -> None:
    body = GOOD.replace('address = "127.0.0.1:7802"', 'address = "127.0.0.1:7802"\n'
                        'transport = "rdma"')
    proc = subprocess.run([sys.executable, "-m", "replicator", "run", "--config",
                           str(write(tmp_path, body))], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert 'transport = "rdma" is not available' in proc.stderr
    assert "Traceback" not in proc.stderr


def with_psk(tmp_path: Path, body: str, mode: int = 0o600, key: bytes = b"k" * 64) -> Path:
    psk = tmp_path / "psk"
    psk.write_bytes(key + b"\n")
    psk.chmod(mode)
    return write(tmp_path, body + f'[auth]\npsk_file = "{psk}"\n')


def test_auth_defaults_and_a_psk_file(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, GOOD)).auth.psk is None
    config = load_config(with_psk(tmp_path, GOOD.replace("127.0.0.1:7801", "10.1.2.3:7801")))
    assert config.auth.psk == b"k" * 64 and config.auth.psk_file == tmp_path / "psk"
    assert "k" * 64 not in repr(config), "the key never shows in a repr"
    assert (config.auth.hello_timeout, config.auth.max_unauthenticated_per_address) == (5.0, 4)


def test_auth_limits_are_read(tmp_path: Path) -> None:
    body = GOOD + ("[auth]\nhello_timeout = 0.5\nmax_connections = 10\nmax_unauthenticated = 3\n"
                   "max_unauthenticated_per_address = 1\n")
    auth = load_config(write(tmp_path, body)).auth
    assert (auth.hello_timeout, auth.max_connections, auth.max_unauthenticated,
            auth.max_unauthenticated_per_address) == (0.5, 10, 3, 1)


@pytest.mark.parametrize(("mode", "key", "message"), [
    (0o640, b"k" * 64, r"\[auth.psk_file\]: .*psk is accessible by group or others \(mode 0640\)"),
    (0o604, b"k" * 64, r"accessible by group or others \(mode 0604\); run: chmod 600"),
    (0o600, b"short", r"holds 5 bytes, at least 32 are needed"),
])
def test_a_weak_psk_file_is_one_clear_error(tmp_path: Path, mode: int, key: bytes,
                                            message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_config(with_psk(tmp_path, GOOD, mode, key))
    assert "\n" not in str(info.value)


AUTH_BAD = [
    (GOOD + '[auth]\npsk = "inline"\n', r"\[auth.psk\]: unknown key"),
    (GOOD + '[auth]\npsk_file = "TMP/none"\n', r"\[auth.psk_file\]: .*none does not exist"),
    (GOOD + "[auth]\nmax_connections = 0\n", r"\[auth.max_connections\]: must be at least 1"),
    (GOOD + "[auth]\nhello_timeout = \"5\"\n", r"\[auth.hello_timeout\]: must be a number"),
    (GOOD.replace("127.0.0.1:7801", "0.0.0.0:7801"),
     r'listen = "0.0.0.0:7801" is not a loopback address but neither \[tls\] nor \[auth\] '
     r"psk_file is configured"),
    (GOOD.replace("127.0.0.1:7801", "mail.example:7801"), r"is not a loopback address"),
]


@pytest.mark.parametrize(("body", "message"), AUTH_BAD)
def test_bad_auth_config_is_one_clear_error(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_config(write(tmp_path, body))
    assert "\n" not in str(info.value)


def test_loopback_without_credentials_is_allowed(tmp_path: Path) -> None:
    for host in ("127.0.0.2", "[::1]", "localhost"):
        load_config(write(tmp_path, GOOD.replace("127.0.0.1:7801", f"{host}:7801")))


def test_cli_refuses_a_readable_psk_file_in_one_line(tmp_path: Path) -> None:
    path = with_psk(tmp_path, GOOD, mode=0o644)
    proc = subprocess.run([sys.executable, "-m", "replicator", "run", "--config", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "accessible by group or others (mode 0644)" in proc.stderr
    assert "Traceback" not in proc.stderr
