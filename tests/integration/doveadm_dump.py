"""`doveadm dump` output as data: the oracle our parsers are compared with.

Two things about doveadm dump (2.3.19) shape how the tests use it:
- dumping an index *opens* it, which replays the log records after the index's head offset
  onto the header; to see a dovecot.index file's own bytes, dump a copy that sits next to a
  log cut at that head offset (`raw_index_copy`).
- it refuses an index without a log ("Couldn't open index"), and it dumps the cache header
  from the same run (the "-- CACHE:" section), since there is no `-t cache`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from replicator.dovecot.headers import parse_index_header, parse_log_header

__all__ = ["IndexDump", "dump_index", "dump_log", "raw_index_copy"]

_FIELD = re.compile(r"^([A-Za-z_][\w ()\[\]]*?)[ .]*= (\S+)")
_RECORD = re.compile(r"^record: offset=(\d+), type=(.+?), size=(\d+)")


def _doveadm_dump(*args: str) -> str:
    res = subprocess.run(["doveadm", "dump", *args], capture_output=True, text=True,
                         timeout=60, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, f"doveadm dump {' '.join(args)}: {res.stderr}"
    return res.stdout


@dataclass
class IndexDump:
    header: dict[str, str] = field(default_factory=dict)
    extensions: list[dict[str, str]] = field(default_factory=list)
    cache: dict[str, str] = field(default_factory=dict)
    records: int = -1


def dump_index(path: Path) -> IndexDump:
    """Header fields, extensions, cache header and record count of `doveadm dump -t index`
    (path: an index file, or a mailbox index directory)."""
    out = IndexDump()
    current: dict[str, str] = out.header
    for line in _doveadm_dump(*(["-t", "index"] if path.is_file() else []), str(path)).splitlines():
        if line.startswith("-- INDEX:"):
            current = out.header
        elif line.startswith("-- Extension"):
            current = {}
            out.extensions.append(current)
        elif line.startswith("-- CACHE:"):
            current = out.cache
        elif line.startswith("-- RECORDS:"):
            out.records = int(line.split(":")[1])
            break
        elif line.startswith("-- "):
            current = {}
        elif (m := _FIELD.match(line)) is not None:
            current.setdefault(m[1], m[2])
    return out


def dump_log(path: Path) -> tuple[dict[str, str], list[tuple[int, str, int]]]:
    """(header fields, [(offset, type name, size)]) of `doveadm dump -t log`."""
    header: dict[str, str] = {}
    records: list[tuple[int, str, int]] = []
    for line in _doveadm_dump("-t", "log", str(path)).splitlines():
        if (r := _RECORD.match(line)) is not None:
            records.append((int(r[1]), r[2], int(r[3])))
        elif not records and (m := _FIELD.match(line)) is not None:
            header[m[1]] = line.split("= ", 1)[1]
    return header, records


def raw_index_copy(index: Path, dest: Path) -> Path | None:
    """dest/dovecot.index (+ cache) beside the log it points at, cut at its head offset, so
    doveadm dump shows the file's own header; None if that log is gone."""
    hdr = parse_index_header(index.read_bytes())
    prefix = index.name
    for log in (index.with_name(prefix + ".log"), index.with_name(prefix + ".log.2")):
        if log.exists() and parse_log_header(log.read_bytes()).file_seq == hdr.log_file_seq:
            dest.mkdir(parents=True)
            shutil.copyfile(index, dest / prefix)
            (dest / (prefix + ".log")).write_bytes(
                log.read_bytes()[:hdr.log_file_head_offset])
            cache = index.with_name(prefix + ".cache")
            if cache.exists():
                shutil.copyfile(cache, dest / cache.name)
            return dest / prefix
    return None
