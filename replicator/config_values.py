"""Typed, located access to TOML values, so every config error names its file and key."""

from __future__ import annotations

import ipaddress
import math
import os
import re
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from replicator.errors import ConfigError

N = TypeVar("N", int, float)


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(text: str, where: str) -> Address:
    """`host:port` or `[v6]:port`, with a port from 1 to 65535."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\[\]\s]+):(\d{1,5})", text)
    if not match:
        raise ConfigError(f"{where}: {text!r} is not host:port (e.g. \"127.0.0.1:7801\")")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if not 1 <= port <= 65535:
        raise ConfigError(f"{where}: port {port} is outside 1-65535")
    if match.group(1):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"{where}: {host!r} is not an IPv6 address") from None
    return Address(host, port)


def is_loopback(host: str) -> bool:
    """Whether a listen host is a loopback address (`localhost` counts; other names do not,
    since what they resolve to can change)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


MIN_PSK_BYTES = 32


def read_psk(path: Path, where: str) -> bytes:
    """The pre-shared key in `path`: at least 32 characters (surrounding whitespace ignored),
    in a regular file that only its owner (this daemon's user, or root) may read."""
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{where}: {path} is not a regular file")
        if info.st_mode & 0o077:
            raise ConfigError(f"{where}: {path} is accessible by group or others (mode "
                              f"{stat.S_IMODE(info.st_mode):04o}); run: chmod 600 {path}")
        if info.st_uid not in (0, os.geteuid()):
            raise ConfigError(f"{where}: {path} is owned by uid {info.st_uid}, not by root or "
                              "the user this runs as")
        key = path.read_bytes().strip()
    except FileNotFoundError:
        raise ConfigError(f"{where}: {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc.strerror}") from None
    if len(key) < MIN_PSK_BYTES:
        raise ConfigError(f"{where}: {path} holds {len(key)} bytes, at least {MIN_PSK_BYTES} are "
                          f"needed (e.g. openssl rand -hex 32 > {path})")
    return key


class ConfigReader:
    """One TOML table plus where it came from, with checks that raise located ConfigErrors."""

    def __init__(self, table: Mapping[str, Any], file: str, section: str) -> None:
        self._table = table
        self._file = file
        self._section = section

    def where(self, key: str) -> str:
        location = f"{self._section}.{key}" if self._section and key else self._section or key
        return f"{self._file}: [{location}]" if location else self._file

    def names(self) -> list[str]:
        return list(self._table)

    def only_keys(self, *allowed: str) -> None:
        for key in self._table:
            if key not in allowed:
                raise ConfigError(f"{self.where(key)}: unknown key (allowed: {', '.join(allowed)})")

    def table(self, key: str, *, required: bool) -> ConfigReader:
        value = self._table.get(key)
        if value is None:
            if required:
                raise ConfigError(f"{self.where(key)}: missing section")
            value = {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{self.where(key)}: must be a table ([{key}])")
        return ConfigReader(value, self._file, key)

    def table_array(self, key: str) -> Iterator[ConfigReader]:
        value = self._table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
            raise ConfigError(f"{self.where(key)}: must be an array of tables ([[{key}]])")
        for index, item in enumerate(value):
            yield ConfigReader(item, self._file, f"{key}][{index}")

    def _get(self, key: str, default: Any) -> Any:
        if key in self._table:
            return self._table[key]
        if default is None:
            raise ConfigError(f"{self.where(key)}: missing key")
        return default

    def raw(self, key: str) -> Any:
        """The value as TOML gave it (the caller checks its type); a missing key is an error."""
        return self._get(key, None)

    def string(self, key: str, default: str | None = None) -> str:
        value = self._get(key, default)
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{self.where(key)}: must be a non-empty string")
        return value

    def pattern(self, key: str, regex: re.Pattern[str], what: str) -> str:
        value = self.string(key)
        if not regex.match(value):
            raise ConfigError(f"{self.where(key)}: {value!r} is not {what}")
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        value = self.string(key, default)
        if value not in choices:
            raise ConfigError(f"{self.where(key)}: {value!r} is not one of {', '.join(choices)}")
        return value

    def abs_path(self, key: str, *, default: Path | None = None, must_exist: bool = False) -> Path:
        value = Path(self.string(key, str(default) if default else None))
        if not value.is_absolute():
            raise ConfigError(f"{self.where(key)}: {str(value)!r} must be an absolute path")
        if must_exist and not value.exists():
            raise ConfigError(f"{self.where(key)}: {value} does not exist")
        return value

    def octal(self, key: str, default: int) -> int:
        value = self._get(key, f"{default:o}")
        if not isinstance(value, str) or not re.fullmatch(r"0?[0-7]{3,4}", value):
            raise ConfigError(f"{self.where(key)}: must be an octal mode string such as \"0660\"")
        return int(value, 8)

    def number(self, key: str, kind: type[N], minimum: N) -> N:
        value = self._table[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{self.where(key)}: must be a number")
        if not math.isfinite(value):  # TOML has inf and nan; a timer set to nan breaks the loop
            raise ConfigError(f"{self.where(key)}: must be a finite number")
        if kind is int and not isinstance(value, int):
            raise ConfigError(f"{self.where(key)}: must be a whole number")
        if value < minimum:
            raise ConfigError(f"{self.where(key)}: must be at least {minimum}")
        return kind(value)
