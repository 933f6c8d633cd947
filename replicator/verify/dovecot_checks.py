"""Dovecot-level checks of one tree of index/control files: would Dovecot accept them as they
are? Per directory: the index parses; its log sequence and offsets exist in the log it names
(a head offset past the log's end is what a copier that ships the index before the log
leaves); the cache belongs to the index; the uidlist parses and agrees with the index's
UIDVALIDITY; the mdbox map index and its log likewise.

Problems Dovecot repairs by itself (a cache of another generation, a torn log tail it will cut)
are warnings, not differences.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from replicator.dovecot.headers import (
    DovecotFormatError,
    IndexFile,
    LogFile,
    cache_belongs_to,
    parse_cache,
    parse_index,
    parse_log,
    parse_uidlist,
)
from replicator.verify.model import Difference
from replicator.verify.walk import walk

Reader = Callable[[Path | str], bytes]
T = TypeVar("T")
INDEX_NAMES = ("dovecot.index", "dovecot.map.index", "dovecot.list.index")


def check_tree(top: Path, label: str, read: Reader,
               index_top: Path | None = None) -> tuple[list[Difference], list[Difference]]:
    """(differences, warnings) for every directory under `top`; `label` prefixes file names
    (e.g. "index"). `index_top`, for a separate CONTROL root, is where the index belonging to
    each maildir uidlist lives (their UIDVALIDITY must agree)."""
    problems: list[Difference] = []
    warnings: list[Difference] = []
    for rel, files in sorted(walk(os.fspath(top))):
        directory = f"{top}/{rel}" if rel else os.fspath(top)
        index_dir = f"{index_top}/{rel}" if index_top is not None else directory
        check_directory(directory, "/".join(part for part in (label, rel) if part), set(files),
                        read, index_dir, problems, warnings)
    return problems, warnings


def check_directory(directory: str, label: str, names: set[str], read: Reader,
                    index_dir: str, problems: list[Difference],
                    warnings: list[Difference]) -> None:
    """Check one directory holding the (non-transient) files `names`, reporting them as
    `label/<name>`; `index_dir` holds the index a uidlist here belongs to (the directory
    itself unless the control files have a root of their own). Promote runs this on each
    directory it copies, with the bytes it read for the copy."""
    prefix = label + "/" if label else ""
    for index_name in INDEX_NAMES:
        if index_name in names or f"{index_name}.log" in names:
            _check_mailbox(directory, index_name, names, prefix, read, problems, warnings)
    if "dovecot-uidlist" in names:
        _check_uidlist(f"{directory}/dovecot-uidlist", index_dir, prefix, read, problems)


def _check_mailbox(directory: str, index_name: str, names: set[str], prefix: str,
                   read: Reader, problems: list[Difference],
                   warnings: list[Difference]) -> None:
    def parsed(name: str, parser: Callable[[bytes], T]) -> T | None:
        if name not in names:
            return None
        return _parsed(f"{directory}/{name}", prefix, parser, read, problems)

    index = parsed(index_name, parse_index)
    log = parsed(f"{index_name}.log", parse_log)
    log2 = parsed(f"{index_name}.log.2", parse_log)
    if log is not None and log.torn is not None:  # Dovecot cuts it before its next append
        warnings.append(Difference(prefix + f"{index_name}.log", "tail", "whole records",
                                   log.torn, "dovecot"))
    if index is not None:
        _check_offsets(index, log, log2, prefix + index_name, problems)
        cache = parsed(f"{index_name}.cache", parse_cache)
        if cache is not None and not cache_belongs_to(cache, index):
            warnings.append(Difference(prefix + f"{index_name}.cache", "file_seq/indexid",
                                       "the index's cache generation", "another", "dovecot"))


def _check_offsets(index: IndexFile, log: LogFile | None, log2: LogFile | None, name: str,
                   problems: list[Difference]) -> None:
    hdr = index.header
    logs = {lf.header.file_seq: lf for lf in (log, log2) if lf is not None}
    if not logs:
        return  # an index without logs: Dovecot recreates the log
    target = logs.get(hdr.log_file_seq)
    if target is None:
        if hdr.log_file_seq > max(logs):
            problems.append(Difference(name, "log_file_seq", f"<= {max(logs)} (the log's)",
                                       str(hdr.log_file_seq), "dovecot"))
        return
    for field in ("log_file_tail_offset", "log_file_head_offset"):
        offset = getattr(hdr, field)
        if offset > target.size or not target.is_record_boundary(offset):
            problems.append(Difference(
                name, field, f"a record boundary within the {target.size}-byte log "
                f"(file_seq {hdr.log_file_seq})", str(offset), "dovecot"))


def _check_uidlist(uidlist: str, index_dir: str, prefix: str, read: Reader,
                   problems: list[Difference]) -> None:
    name = prefix + "dovecot-uidlist"
    try:
        parsed = parse_uidlist(read(uidlist))
    except FileNotFoundError:
        return  # deleted since the walk listed it (a live tree); its presence is checked apart
    except DovecotFormatError as exc:
        problems.append(Difference(name, "format", "a uidlist Dovecot accepts", str(exc),
                                   "dovecot"))
        return
    index_path = f"{index_dir}/dovecot.index"
    try:
        index = parse_index(read(index_path))
    except (DovecotFormatError, FileNotFoundError):
        return  # no index yet, or reported with the index
    if index.header.uid_validity not in (0, parsed.uid_validity):
        problems.append(Difference(name, "uid_validity",
                                   f"{index.header.uid_validity} (the index's)",
                                   str(parsed.uid_validity), "dovecot"))


def _parsed(path: str, prefix: str, parser: Callable[[bytes], T], read: Reader,
            problems: list[Difference]) -> T | None:
    try:
        return parser(read(path))
    except FileNotFoundError:
        return None  # deleted since the walk listed it (a live tree)
    except DovecotFormatError as exc:
        problems.append(Difference(prefix + os.path.basename(path), "format",
                                   "a file Dovecot accepts",
                                   str(exc), "dovecot"))
        return None
