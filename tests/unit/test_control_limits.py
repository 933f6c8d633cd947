"""The control socket's bounds as plain objects: who may hold how many connections, the
rate-limited log, what STATUS shows a non-admin, and the [replication] keys that set them."""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path

import pytest

from replicator.config import Config, parse_config
from replicator.control.limits import ADMIN_RESERVE, ConnectionLimits, OncePerMinute
from replicator.errors import ConfigError
from replicator.status import public_view


def test_one_uid_at_its_cap_leaves_room_for_others_and_for_admins() -> None:
    limits = ConnectionLimits(per_uid=3, total=5)
    assert [limits.admit(1000, False) for _ in range(4)][-1] is not None  # 4th refused
    assert limits.admit(1001, False) is None and limits.admit(1001, False) is None
    assert "are open already" in str(limits.admit(1002, False))  # total reached
    assert all(limits.admit(0, True) is None for _ in range(ADMIN_RESERVE))
    assert limits.admit(0, True) is not None
    limits.release(1000, False)
    assert limits.admit(1002, False) is None
    assert sum(limits.held.values()) == 5


def test_refusals_are_logged_once_per_key_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    warn = OncePerMinute(logging.getLogger("t"))
    with caplog.at_level(logging.WARNING, "t"):
        for _ in range(100):
            warn.warning(("limit", 65534), "refused %s", 65534)
        warn.warning(("limit", 1000), "refused %s", 1000)
    assert [r.getMessage() for r in caplog.records] == ["refused 65534", "refused 1000"]


def test_the_public_status_names_no_directory_address_or_error() -> None:
    full = {"node": "a", "counters": {"sync_ok": 1},
            "peers": {"b": {"address": "10.0.0.2:7000", "state": "streaming",
                            "last_error": "refused /srv/index/alice/box",
                            "broken_dirs": ["index/alice/box"], "acked_seq": 4,
                            "transport": {"name": "tcp", "peer": "10.0.0.2:7000", "tls": True}}},
            "replicas": {"b": {"seq": 3, "broken_dirs": ["index\0bob/box"]}}}
    shown = str(public_view(full))
    for secret in ("alice", "bob", "10.0.0.2", "/srv"):
        assert secret not in shown
    view = public_view(full)
    assert view["peers"]["b"]["state"] == "streaming" and view["peers"]["b"]["broken_dirs"] == 1
    assert view["replicas"]["b"]["broken_dirs"] == 1 and view["counters"] == {"sync_ok": 1}


def _config(tmp_path: Path, replication: str) -> str:
    (tmp_path / "index").mkdir(exist_ok=True)
    return (f'[node]\nid = "a"\nlisten = "127.0.0.1:7000"\nreplica_dir = "{tmp_path}/r"\n'
            f'state_dir = "{tmp_path}/s"\n[roots]\nindex = "{tmp_path}/index"\n'
            f"[replication]\n{replication}\n")


def _parse(tmp_path: Path, replication: str) -> Config:
    return parse_config(tomllib.loads(_config(tmp_path, replication)), tmp_path / "c.toml")


def test_sync_policy_and_control_limits_are_read_from_replication(tmp_path: Path) -> None:
    config = _parse(tmp_path, 'sync_policy = "fail"\ncontrol_max_per_uid = 8\n'
                              "control_idle_timeout = 5.0")
    tuning = config.tuning
    assert (tuning.sync_policy, tuning.control_max_per_uid, tuning.control_idle_timeout,
            tuning.control_max_connections) == ("fail", 8, 5.0, 1024)
    assert _parse(tmp_path, "").tuning.sync_policy == "off"


@pytest.mark.parametrize(("line", "message"), [
    ('sync_policy = "always"', "not one of off, degrade, fail"),
    ("control_max_per_uid = 0", "at least 1"),
    ("control_idle_timeout = 0.5", "at least 1"),
])
def test_bad_values_are_clear_errors(tmp_path: Path, line: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _parse(tmp_path, line)
