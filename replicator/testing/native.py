"""Where the sync-commit plugin (native/) is built for the installed Dovecot.

native/Makefile builds into a directory per Dovecot version (one checkout serves a 2.3 host and
a 2.4 chroot that binds the same tree) and is the only owner of that path: this module asks it
(`make print-dir`) instead of knowing the layout. Everything that loads the plugin from the
checkout (tests, the demo, the benchmarks) goes through `sync_plugin_dir()`.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

__all__ = ["NATIVE_SRC", "sync_plugin_dir"]

NATIVE_SRC = Path(__file__).resolve().parents[2] / "native"


def _make(*args: str) -> str:
    res = subprocess.run(["make", "-s", "--no-print-directory", "-C", str(NATIVE_SRC), *args],
                         capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"make -C {NATIVE_SRC} {' '.join(args)} failed:\n"
                           f"{res.stdout}{res.stderr}")
    return res.stdout


@functools.cache
def sync_plugin_dir() -> Path:
    """The directory holding lib00_replicator_sync_plugin.so for the installed Dovecot, to use as
    `mail_plugin_dir`; built first, once per process (`make` is a no-op when it is up to date,
    and on 2.4 it also puts the settings module where doveconf looks for it)."""
    _make()
    return Path(_make("print-dir").strip())
