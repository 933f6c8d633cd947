"""Renders the dovecot.conf of one test/bench/demo node.

Kept apart from the process handling in `instance.py` so that the settings a node runs with can be
read (and reviewed) in one place: only IMAP on 127.0.0.1, no TLS, passwd-file users, and the
INDEX/CONTROL split that the replicator depends on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

MailFormat = Literal["maildir", "mdbox", "sdbox"]
MAIL_FORMATS: tuple[MailFormat, ...] = ("maildir", "mdbox", "sdbox")

# Hidden 2.3.19 settings (lib-storage/mail-storage-settings.c). Zero means "built-in default" in
# mail_index_set_optimization_settings(), so the smallest useful value is 1. With these, every
# sync that reads more than 1 byte of log rewrites dovecot.index, the log rotates once it is
# older than 1 s (or larger than 4 KiB), and a cache with any deleted or continued record is
# purged (rewritten through a temp file) as soon as it is noticed.
CHURN_SETTINGS: Mapping[str, str] = {
    "mail_index_rewrite_min_log_bytes": "1",
    "mail_index_rewrite_max_log_bytes": "1",
    "mail_index_log_rotate_min_size": "1",
    "mail_index_log_rotate_max_size": "4k",
    "mail_index_log_rotate_min_age": "1s",
    "mail_index_log2_max_age": "1s",
    "mail_cache_purge_min_size": "1",
    "mail_cache_purge_delete_percentage": "1",
    "mail_cache_purge_continued_percentage": "1",
    "mail_cache_purge_header_continue_count": "1",
}


@dataclass(frozen=True)
class DovecotLayout:
    """Where one node's Dovecot keeps things; only index_root and control_root are replicated."""

    mail_root: Path
    index_root: Path
    control_root: Path
    mail_format: MailFormat


def mail_location(layout: DovecotLayout) -> str:
    """The mail_location with INDEX and CONTROL split off from the bodies.

    Bodies live under `<mail_root>/<user>/<Maildir|mdbox|sdbox>`; mdbox keeps its `m.*` files in
    `storage/` there and its map index in `<index_root>/<user>/storage/dovecot.map.index*`.
    """
    sub = {"maildir": "Maildir", "mdbox": "mdbox", "sdbox": "sdbox"}[layout.mail_format]
    return (
        f"{layout.mail_format}:{layout.mail_root}/%u/{sub}"
        f":INDEX={layout.index_root}/%u:CONTROL={layout.control_root}/%u"
    )


@dataclass(frozen=True)
class ConfInputs:
    """Everything render_config needs; built by DovecotInstance."""

    instance_name: str
    base_dir: Path
    log_path: Path
    passwd_path: Path
    layout: DovecotLayout
    imap_port: int
    mail_uid: int
    mail_gid: int
    mail_fsync: str
    mail_plugins: Sequence[str] = ()
    mail_plugin_dir: Path | None = None
    plugin_settings: Mapping[str, str] | None = None
    churn: bool = False
    extra_config: str = ""


def render_config(inp: ConfInputs) -> str:
    """Returns a complete, self-contained dovecot.conf (no includes of the system config)."""
    lines = [
        f"instance_name = {inp.instance_name}",
        f"base_dir = {inp.base_dir}",
        f"state_dir = {inp.base_dir}/state",
        f"log_path = {inp.log_path}",
        "protocols = imap",
        "listen = 127.0.0.1",
        "ssl = no",
        "disable_plaintext_auth = no",
        "auth_mechanisms = plain login",
        f"first_valid_uid = {inp.mail_uid}",
        f"first_valid_gid = {inp.mail_gid}",
        f"mail_location = {mail_location(inp.layout)}",
        f"mail_fsync = {inp.mail_fsync}",
        "namespace inbox {\n  inbox = yes\n  separator = /\n}",
        f"passdb {{\n  driver = passwd-file\n  args = scheme=PLAIN {inp.passwd_path}\n}}",
        f"userdb {{\n  driver = passwd-file\n  args = {inp.passwd_path}\n}}",
        _listeners(inp.imap_port),
    ]
    lines += [f"{k} = {v}" for k, v in (CHURN_SETTINGS if inp.churn else {}).items()]
    lines += _plugin_lines(inp)
    if inp.extra_config:
        lines.append(inp.extra_config)
    return "\n".join(lines) + "\n"


def _listeners(port: int) -> str:
    """Only plain IMAP on loopback; imaps is switched off and doveadm has no inet listener."""
    return (
        "service imap-login {\n"
        f"  inet_listener imap {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n"
        "  inet_listener imaps {\n    port = 0\n  }\n"
        "}"
    )


def _plugin_lines(inp: ConfInputs) -> list[str]:
    lines: list[str] = []
    if inp.mail_plugins:
        lines.append("mail_plugins = $mail_plugins " + " ".join(inp.mail_plugins))
    if inp.mail_plugin_dir is not None:
        lines.append(f"mail_plugin_dir = {inp.mail_plugin_dir}")
    if inp.plugin_settings:
        body = "".join(f"  {k} = {v}\n" for k, v in inp.plugin_settings.items())
        lines.append("plugin {\n" + body + "}")
    return lines


def passwd_file(users: Sequence[str], passwords: Mapping[str, str], uid: int, gid: int,
                home_root: Path) -> str:
    """passwd-file lines: user:{PLAIN}password:uid:gid::home:: (plaintext on purpose: tests)."""
    return "".join(
        f"{u}:{{PLAIN}}{passwords[u]}:{uid}:{gid}::{home_root}/{u}::\n" for u in users
    )
