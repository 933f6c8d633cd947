"""Renders the dovecot.conf of one test/bench/demo node, in 2.3's or 2.4's language.

Kept apart from the process handling in `instance.py` so that the settings a node runs with can be
read (and reviewed) in one place: only IMAP on 127.0.0.1, no TLS, passwd-file users, and the
INDEX/CONTROL split that the replicator depends on. The language follows the installed Dovecot
(`version.installed()`); a `version` argument renders for another one (README's examples).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from replicator.dovecot.version import DovecotVersion, installed

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


MAIL_SUBDIR: Mapping[MailFormat, str] = {"maildir": "Maildir", "mdbox": "mdbox", "sdbox": "sdbox"}


# 2.4 dropped the one-letter variables; 2.3 understands the long form too, so we write %{user}.
_V24_VARIABLES = {"u": "%{user}", "n": "%{user|username}", "d": "%{user|domain}",
                  "h": "%{home}", "%": "%"}
# The mail_location keys 2.4 turned into settings of their own.
_V24_LOCATION_KEYS = {"INBOX": "mail_inbox_path", "LAYOUT": "mailbox_list_layout",
                      "DIRNAME": "mailbox_directory_name", "ALT": "mail_alt_path",
                      "VOLATILEDIR": "mail_volatile_path", "INDEX": "mail_index_path",
                      "CONTROL": "mail_control_path"}


class MailLocationError(ValueError):
    """A mail location this writer cannot express for the installed Dovecot."""


def location_settings(location: str, index_dir: Path, control_dir: Path,
                      version: DovecotVersion | None = None) -> list[str]:
    """The settings for a 2.3-style location `driver:path[:KEY=VALUE]...` with INDEX and
    CONTROL moved to `<index_dir>/<user>` and `<control_dir>/<user>`: one `mail_location` line
    on 2.3; `mail_driver`, `mail_path`, `mail_index_path`, `mail_control_path` (and one
    setting per other key) on 2.4, with %u/%n/%d/%h spelled the 2.4 way."""
    driver, sep, rest = location.partition(":")
    if not sep or not driver or not rest:
        raise MailLocationError(f"{location!r} is not driver:path (e.g. maildir:~/Maildir)")
    if not (version or installed()).settings_v24:
        return [f"mail_location = {location}:INDEX={index_dir}/%{{user}}"
                f":CONTROL={control_dir}/%{{user}}"]
    path, *options = rest.split(":")
    lines = [f"mail_driver = {driver}", f"mail_path = {_v24_variables(path)}"]
    for option in options:
        key, _, value = option.partition("=")
        if key not in _V24_LOCATION_KEYS or key in ("INDEX", "CONTROL"):
            raise MailLocationError(f"{location!r}: {key} is not supported here")
        lines.append(f"{_V24_LOCATION_KEYS[key]} = {_v24_variables(value)}")
    return [*lines, f"mail_index_path = {index_dir}/%{{user}}",
            f"mail_control_path = {control_dir}/%{{user}}"]


def _v24_variables(value: str) -> str:
    return re.sub(r"%([%undh])", lambda m: _V24_VARIABLES[m.group(1)], value)


def layout_settings(layout: DovecotLayout, version: DovecotVersion | None = None) -> list[str]:
    """A node's mail settings: bodies under `<mail_root>/<user>/<Maildir|mdbox|sdbox>` (mdbox
    keeps its `m.*` files in `storage/` there and its map index in
    `<index_root>/<user>/storage/dovecot.map.index*`), INDEX and CONTROL split off."""
    return location_settings(
        f"{layout.mail_format}:{layout.mail_root}/%{{user}}/{MAIL_SUBDIR[layout.mail_format]}",
        layout.index_root, layout.control_root, version)


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


def render_config(inp: ConfInputs, version: DovecotVersion | None = None) -> str:
    """Returns a complete, self-contained dovecot.conf (no includes of the system config) in
    the language of `version` (the installed Dovecot's by default)."""
    v24 = (version or installed()).settings_v24
    lines = [
        *preamble(version),
        f"instance_name = {inp.instance_name}",
        f"base_dir = {inp.base_dir}",
        f"state_dir = {inp.base_dir}/state",
        f"log_path = {inp.log_path}",
        "protocols = imap",
        "listen = 127.0.0.1",
        "ssl = no",
        "auth_allow_cleartext = yes" if v24 else "disable_plaintext_auth = no",
        "auth_mechanisms = plain login",
        f"first_valid_uid = {inp.mail_uid}",
        f"first_valid_gid = {inp.mail_gid}",
        *layout_settings(inp.layout, version),
        f"mail_fsync = {inp.mail_fsync}",
        "namespace inbox {\n  inbox = yes\n  separator = /\n}",
        passwd_file_passdb(inp.passwd_path, "users", version),
        _passwd_file_userdb(inp.passwd_path, v24),
        _listeners(inp.imap_port, v24),
    ]
    lines += [f"{k} = {v}" for k, v in (CHURN_SETTINGS if inp.churn else {}).items()]
    lines += _plugin_lines(inp, v24)
    if inp.extra_config:
        lines.append(inp.extra_config)
    return "\n".join(lines) + "\n"


# The oldest Dovecot whose files a 2.4 node may write: a pair in the middle of an upgrade
# promotes each other's replicas on either version, and 2.4 writes no newer format than this
# names (Dovecot's upgrade notes; 2.4.1 writes 2.3's formats anyway, tests/golden).
STORAGE_VERSION = "2.3.0"


def preamble(version: DovecotVersion | None = None) -> list[str]:
    """What a dovecot.conf must start with: nothing on 2.3; on 2.4 the version its settings
    are written for and the storage version (STORAGE_VERSION)."""
    version = version or installed()
    if not version.settings_v24:
        return []
    return [f"dovecot_config_version = {version.config_version}",
            f"dovecot_storage_version = {STORAGE_VERSION}"]


def passwd_file_passdb(path: Path, name: str, version: DovecotVersion | None = None) -> str:
    """A passdb block reading a passwd-file (`user:{SCHEME}password:...` lines); `name` tells
    two passdbs apart on 2.4 (2.3 has no names)."""
    if (version or installed()).settings_v24:
        return (f"passdb {name} {{\n  driver = passwd-file\n  passwd_file_path = {path}\n"
                "  default_password_scheme = PLAIN\n}")
    return f"passdb {{\n  driver = passwd-file\n  args = scheme=PLAIN {path}\n}}"


def _passwd_file_userdb(path: Path, v24: bool) -> str:
    if v24:
        return f"userdb users {{\n  driver = passwd-file\n  passwd_file_path = {path}\n}}"
    return f"userdb {{\n  driver = passwd-file\n  args = {path}\n}}"


def _listeners(port: int, v24: bool) -> str:
    """Only plain IMAP on loopback (2.4 listens where the global `listen` says); imaps is
    switched off and doveadm has no inet listener."""
    address = "" if v24 else "    address = 127.0.0.1\n"
    return (
        "service imap-login {\n"
        f"  inet_listener imap {{\n{address}    port = {port}\n  }}\n"
        "  inet_listener imaps {\n    port = 0\n  }\n"
        "}"
    )


def _plugin_lines(inp: ConfInputs, v24: bool) -> list[str]:
    lines = mail_plugins_lines(inp.mail_plugins, v24)
    if inp.mail_plugin_dir is not None:
        lines.append(f"mail_plugin_dir = {inp.mail_plugin_dir}")
    if inp.plugin_settings:
        lines.append(plugin_settings_block(inp.plugin_settings, v24))
    return lines


def mail_plugins_lines(plugins: Sequence[str], v24: bool) -> list[str]:
    """Loads `plugins` besides those already loaded: 2.3 appends to a string, 2.4 switches
    each one on in a boolean list."""
    if not plugins:
        return []
    if v24:
        return ["mail_plugins {\n" + "".join(f"  {p} = yes\n" for p in plugins) + "}"]
    return ["mail_plugins = $mail_plugins " + " ".join(plugins)]


def plugin_setting_override(name: str, value: str,
                            version: DovecotVersion | None = None) -> str:
    """The `doveadm -o` argument that sets one plugin setting for one run: 2.3 keeps plugin
    settings in `plugin {}` (`plugin/NAME=VALUE`), 2.4 at the top level (`NAME=VALUE`)."""
    if (version or installed()).settings_v24:
        return f"{name}={value}"
    return f"plugin/{name}={value}"


def plugin_settings_block(settings: Mapping[str, str], v24: bool | None = None) -> str:
    """2.3 reads plugin settings from a `plugin {}` block; 2.4 has none: they are top-level
    settings that the plugin declares."""
    if v24 is None:
        v24 = installed().settings_v24
    if v24:
        return "\n".join(f"{k} = {v}" for k, v in settings.items())
    return "plugin {\n" + "".join(f"  {k} = {v}\n" for k, v in settings.items()) + "}"


def passwd_file(users: Sequence[str], passwords: Mapping[str, str], uid: int, gid: int,
                home_root: Path) -> str:
    """passwd-file lines: user:{PLAIN}password:uid:gid::home:: (plaintext on purpose: tests)."""
    return "".join(
        f"{u}:{{PLAIN}}{passwords[u]}:{uid}:{gid}::{home_root}/{u}::\n" for u in users
    )


# README's example: where a Debian system keeps mail, and the two replicated roots.
EXAMPLE_LAYOUT = DovecotLayout(Path("/srv/mail"), Path("/var/lib/dovecot-index"),
                               Path("/var/lib/dovecot-control"), "maildir")
EXAMPLE_PLUGIN_SETTINGS = {"replicator_sync_socket": "/run/dovecot-replicator/control.sock",
                           "replicator_sync_policy": "fail", "replicator_sync_timeout": "2000"}


def operator_example(version: DovecotVersion) -> str:
    """The lines of dovecot.conf the replicator needs, as README shows them for `version`:
    rendered by the functions every test node's configuration is made of, so what README says
    is what the tests run (tests/unit/test_readme_configs.py keeps the two equal)."""
    v24 = version.settings_v24
    return "\n".join([*preamble(version), *layout_settings(EXAMPLE_LAYOUT, version),
                      *mail_plugins_lines(("replicator_sync",), v24),
                      plugin_settings_block(EXAMPLE_PLUGIN_SETTINGS, v24)]) + "\n"
