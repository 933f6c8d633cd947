"""The one place that knows which Dovecot is installed.

Dovecot 2.4 changed the configuration language (`dovecot_config_version`, `mail_driver` and
`mail_path` instead of `mail_location`, named passdb/userdb blocks, `%{user}` instead of `%u`,
plugin settings as top-level settings that a plugin must declare), while the on-disk formats the
replicator reads did not change between 2.3.19 and 2.4.1 (tests/golden holds files of both). Every
difference that follows from the version is decided here, once, from `dovecot --version`; the
rest of the code asks `installed()` for the `DovecotVersion` and calls what it offers, never
compares version numbers itself.
"""

from __future__ import annotations

import functools
import re
import subprocess
from dataclasses import dataclass

__all__ = ["DovecotVersion", "DovecotVersionError", "installed", "parse"]

_VERSION_RE = re.compile(r"^(\d+)\.(\d+)\.(\d+)")


class DovecotVersionError(RuntimeError):
    """Dovecot is not installed, or says a version this project does not know."""


@dataclass(frozen=True, order=True)
class DovecotVersion:
    major: int
    minor: int
    patch: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"

    @property
    def series(self) -> str:
        """"2.3" or "2.4": the configuration language this Dovecot speaks."""
        return f"{self.major}.{self.minor}"

    @property
    def settings_v24(self) -> bool:
        """2.4's configuration language and plugin settings API (declared settings)."""
        return (self.major, self.minor) >= (2, 4)

    @property
    def doveadm_without_userdb(self) -> tuple[str, ...]:
        """What a doveadm mail command needs to take the user from USER/HOME instead of a
        userdb: nothing on 2.3; 2.4 insists on `--no-userdb-lookup` when no -u is given."""
        return ("--no-userdb-lookup",) if self.settings_v24 else ()

    @property
    def config_version(self) -> str:
        """The value 2.4 wants as `dovecot_config_version`: the settings' defaults of this
        version, which our configurations were written and tested against."""
        return str(self)


def parse(text: str) -> DovecotVersion:
    """`2.4.1-4 (7d8c0e5759)` or `2.3.19.1 (9b53102964)` -> the version; refuses what this
    project was not built for (anything before 2.3 or after 2.4)."""
    match = _VERSION_RE.match(text.strip())
    if match is None:
        raise DovecotVersionError(f"cannot read a Dovecot version from {text.strip()!r}")
    version = DovecotVersion(*(int(g) for g in match.groups()))
    if version.series not in ("2.3", "2.4"):
        raise DovecotVersionError(f"Dovecot {version} is not supported (2.3 and 2.4 are)")
    return version


@functools.cache
def installed() -> DovecotVersion:
    """The installed Dovecot's version, asked once per process (`dovecot --version`). To
    render for another version (README's examples), pass `parse("2.4.1")` to the writer."""
    try:
        res = subprocess.run(["dovecot", "--version"], capture_output=True, text=True,
                             timeout=30, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise DovecotVersionError("dovecot is not installed (no `dovecot` in PATH)") from None
    if res.returncode != 0:
        raise DovecotVersionError(f"`dovecot --version` failed: {res.stderr.strip()}")
    return parse(res.stdout)
