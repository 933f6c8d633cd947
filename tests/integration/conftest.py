"""Fixtures that start real Dovecot instances (2.3 or 2.4) under pytest's tmp_path.

`dovecot_factory` follows the `mail_format` fixture, which runs each test once per format;
a test that wants fewer formats parametrizes `mail_format` itself:

    @pytest.mark.parametrize("mail_format", ["mdbox"])
    def test_x(dovecot_factory): ...

Nodes made by one factory share one mail root (the "replicated FS" holding bodies) and get
their own index and control roots, as the replicator's deployment does.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from replicator.dovecot.instance import DovecotInstance, DovecotLayout, MailFormat
from replicator.dovecot.instance_conf import MAIL_FORMATS
from replicator.testing.cluster import ReplicatorNode, stop_all
from replicator.testing.etcd import EtcdCluster, etcd_cluster, have_etcd
from replicator.testing.native import sync_plugin_dir

DEFAULT_USERS = ("u1", "u2", "u3")


def _need_dovecot() -> None:
    for tool in ("dovecot", "doveadm", "doveconf"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (make bootstrap installs Dovecot)")


class DovecotFactory:
    """Creates nodes; every node it made is stopped (or killed) at teardown."""

    def __init__(self, base: Path, mail_format: MailFormat) -> None:
        self.base = base
        self.mail_format = mail_format
        self.mail_root = base / "shared-mail"
        self.instances: list[DovecotInstance] = []

    def layout(self, name: str, mail_format: MailFormat | None = None) -> DovecotLayout:
        """Shared bodies, per-node INDEX and CONTROL roots."""
        node = self.base / name
        return DovecotLayout(self.mail_root, node / "index", node / "control",
                             mail_format or self.mail_format)

    def __call__(self, name: str = "a", users: Sequence[str] = DEFAULT_USERS, *,
                 layout: DovecotLayout | None = None, start: bool = True,
                 **options: Any) -> DovecotInstance:
        inst = DovecotInstance(self.base / name / "dovecot", name, layout or self.layout(name),
                               users, **options)
        self.instances.append(inst)
        if start:
            inst.start()
        return inst

    def close(self) -> None:
        """SIGKILLs what is still running: a graceful stop costs a hard-coded second of
        Dovecot's master per node, and a test that needs one calls stop() itself."""
        for inst in self.instances:
            inst.kill9()


@pytest.fixture(params=MAIL_FORMATS)
def mail_format(request: pytest.FixtureRequest) -> MailFormat:
    fmt: MailFormat = request.param
    return fmt


@pytest.fixture
def dovecot_factory(tmp_path: Path, mail_format: MailFormat) -> Iterator[DovecotFactory]:
    _need_dovecot()
    factory = DovecotFactory(tmp_path, mail_format)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="session")
def plugin_dir() -> Path:
    """The sync-commit plugin's build directory for the installed Dovecot, built once per run
    (native/Makefile)."""
    return sync_plugin_dir()


@pytest.fixture
def nodes() -> Iterator[list[ReplicatorNode]]:
    """Daemons a test starts (append them); all are stopped at teardown."""
    made: list[ReplicatorNode] = []
    yield made
    stop_all(made)


@pytest.fixture
def etcd(tmp_path: Path, plugin_dir: Path) -> Iterator[EtcdCluster]:
    """A real 3-member etcd on loopback (ownership tests; they skip without etcd-server)."""
    if (reason := have_etcd()) is not None:
        pytest.skip(reason)
    with etcd_cluster(tmp_path / "etcd") as cluster:
        yield cluster
