"""Appending a transaction to a stopped Dovecot's transaction log the way Dovecot appends one.

Dovecot takes a whole-file fcntl write lock on the log (lock_method = fcntl, the default),
cuts away any torn tail left by a crashed writer (mail_transaction_log_append_locked), and
writes the new records at the end of the complete ones. We do the same; a lock we cannot get
means a live Dovecot owns the file, and we refuse rather than wait.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from replicator.dovecot.binfmt import DovecotFormatError
from replicator.dovecot.logfile import LogHeader, parse_log_header
from replicator.dovecot.nextuid_files import NextUidError

__all__ = ["LockedLog", "LogLockedError", "locked_log"]


class LogLockedError(NextUidError):
    """Another process holds the log's fcntl lock (a running Dovecot, most likely)."""


@dataclass(frozen=True)
class LockedLog:
    """An open, write-locked log with the bytes it held when the lock was taken."""

    path: Path
    fd: int
    data: bytes
    header: LogHeader

    def append(self, records: bytes, end: int, fsync: bool) -> int:
        """Writes records at `end` (the end of the complete records), first cutting any torn
        bytes after it; returns how many bytes were cut."""
        if not self.header.hdr_size <= end <= len(self.data):
            raise ValueError(f"{self.path}: append offset {end} outside the log")
        cut = len(self.data) - end
        if cut:
            os.ftruncate(self.fd, end)
        written = os.pwrite(self.fd, records, end)
        if written != len(records):
            raise OSError(errno.EIO, f"{self.path}: short write ({written} of {len(records)})")
        if fsync:
            os.fdatasync(self.fd)
        return cut


@contextmanager
def locked_log(path: Path, kind: str) -> Iterator[LockedLog]:
    """Opens path read-write, takes Dovecot's lock without waiting, reads it whole.

    FileNotFoundError propagates: callers decide what a missing log means.
    """
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            raise LogLockedError(f"{path} is locked: is Dovecot running on it?") from None
        size = os.fstat(fd).st_size
        data = os.pread(fd, size, 0)
        if len(data) != size:
            raise DovecotFormatError(kind, len(data), f"short read ({len(data)} of {size})")
        yield LockedLog(path, fd, data, parse_log_header(data, kind))
    finally:
        os.close(fd)
