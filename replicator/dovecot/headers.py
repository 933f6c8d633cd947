"""Parsers of Dovecot 2.3's on-disk index, log, cache and uidlist files: one import for callers.

Callers (verify, promote) know which file they hold, so there is no detection by name or magic:
pick the parser. All are pure functions over bytes returning frozen values, and all fail with
one `DovecotFormatError` whose message names the file kind, the offset and the problem.

- `parse_index` / `parse_index_header`: dovecot.index, dovecot.map.index (indexfile.py)
- `parse_log` / `iter_log_records` / `is_record_boundary`: dovecot.index.log[.2], map logs
  (logfile.py, logscan.py, logrecord.py)
- `parse_cache`: dovecot.index.cache header (cachefile.py)
- `parse_uidlist`: maildir dovecot-uidlist (uidlist.py)
"""

from __future__ import annotations

from replicator.dovecot.binfmt import DovecotFormatError
from replicator.dovecot.cachefile import CacheHeader, parse_cache
from replicator.dovecot.indexfile import (
    IndexExtension,
    IndexFile,
    IndexHeader,
    parse_index,
    parse_index_header,
)
from replicator.dovecot.logfile import (
    LogFile,
    LogHeader,
    is_record_boundary,
    iter_log_records,
    parse_log,
    parse_log_header,
)
from replicator.dovecot.logrecord import LogRecord
from replicator.dovecot.uidlist import Uidlist, parse_uidlist

__all__ = [
    "CacheHeader",
    "DovecotFormatError",
    "IndexExtension",
    "IndexFile",
    "IndexHeader",
    "LogFile",
    "LogHeader",
    "LogRecord",
    "Uidlist",
    "cache_belongs_to",
    "is_record_boundary",
    "iter_log_records",
    "parse_cache",
    "parse_index",
    "parse_index_header",
    "parse_log",
    "parse_log_header",
    "parse_uidlist",
]


def cache_belongs_to(cache: CacheHeader, index: IndexFile) -> bool:
    """True when Dovecot would use this cache with this index (same indexid, and file_seq equal
    to the reset_id of the index's "cache" extension)."""
    ext = index.extension("cache")
    return (cache.indexid == index.header.indexid
            and (ext is None or ext.reset_id == cache.file_seq))
