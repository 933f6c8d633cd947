"""What every file of a replica should hold, as its origin announced it.

The receiver records the size and xxh3-128 of every file a batch changes (and the paths it
removes), so that a replica can be verified, and a promote can refuse a damaged copy, when the
origin is gone. The journal lives beside the replica (`.digests`, JSON lines, appended;
rewritten compactly when it has grown to twice what it describes).

Crash consistency: a batch's changes are written as one intent record (`B`) *before* its
renames make them visible, and a commit mark (`C`) after (carried by the next write: one write
per batch). A batch without its mark (a kill -9 between the two, or simply the last batch) may
have each of its files in its old or its new state, and either is accepted (`uncertain`) until
the receiver, on restart, reads the files and records which one each holds; anything else is
damage. A torn last line (a crash mid-append, or a
full filesystem) is ignored on load and cut off by the receiver: it can only be the last one,
since every append that fails is cut back before the next. A batch that changes no file (only
directories) writes no record.

Digests: a journal starts with `["V", 2]`, its digests being those of `replicator.hashing`
(a file over 64 KiB named by its chunks' digests). A journal without it (written before that)
named every file by the xxh3-128 of its whole content: on load, each such entry of a longer
file is converted by reading the file, when it holds what the entry says (else the entry is
kept, and the file stays reported as differing). The receiver then rewrites the journal.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import xxhash

from replicator.hashing import CHUNK_SIZE, digest
from replicator.replica.below import count_below
from replicator.replica.beneath import read_file_under
from replicator.replica.rewritten import KeptDescriptor

log = logging.getLogger(__name__)
Expected = tuple[int, str]  # size, xxh3-128 hex
Change = tuple[str, Expected | None]  # rel, what it holds after the batch (None: removed)
DIGESTS_VERSION = 2  # see the module's docstring
_VERSION_LINE = f'["V", {DIGESTS_VERSION}]'


class DigestJournal(KeptDescriptor):
    def __init__(self, path: Path, *, repair: bool = False) -> None:
        """Load `path`; with `repair` (the receiver, its only writer) a torn tail is cut off."""
        self.path = path
        self.files: dict[str, Expected] = {}
        # files of batches without a commit mark: every state they may hold
        self.uncertain: dict[str, list[Expected | None]] = {}
        self._open: dict[int, list[str]] = {}  # batch id -> its files, until its commit mark
        self._next_id = 1
        self._below: dict[str, int] = {}  # directory -> how many files it holds, at any depth
        self.exists = path.exists()
        self._pending: list[str] = []
        self._marks: list[str] = []  # commit marks, written with the next record
        self._lines = 0
        self._digests_version = DIGESTS_VERSION
        self._upgraded = False  # entries converted on load: rewrite once no batch is open
        if self.exists:
            self._digests_version = 1  # until its first line says otherwise
            self._load(repair)
            if self._digests_version < DIGESTS_VERSION:
                self._convert_whole_file_digests()

    def _load(self, repair: bool) -> None:
        with open(self.path, "rb") as f:
            data = f.read()
        lines = _lines(data)
        committed = {mark for _, line, _ in lines if (mark := _commit_mark(line))}
        good = 0
        for offset, line, last in lines:
            try:
                if mark := _commit_mark(line):
                    self._commit(mark)
                else:
                    self._replay(json.loads(line), committed)
            except (ValueError, TypeError, IndexError, KeyError):
                if last:
                    break  # torn tail: cut off below
                log.warning("%s: skipping a damaged record at byte %d", self.path, offset)
                continue
            self._lines += 1
            good = offset + len(line) + 1
        if repair and good < len(data):
            log.warning("%s: cutting off a torn last record (%d bytes)", self.path,
                        len(data) - good)
            os.truncate(self.path, good)

    def _replay(self, record: list[object], committed: set[int]) -> None:
        """Replay one record; `committed`: the batches whose commit mark the file holds."""
        kind = record[0]
        if kind == "B":
            batch = int(str(record[1]))
            changes = _changes(record[2])
            if batch in committed and not self._open:  # what _begin and _commit come to
                for rel, new in changes:
                    if new is None:
                        self._drop(rel)
                    else:
                        self._set(rel, new)
            else:
                self._begin(batch, changes)
            self._next_id = max(self._next_id, batch + 1)
        elif kind == "C":
            self._commit(int(str(record[1])))
        elif kind == "+":
            self._settled(str(record[1]))
            self._set(str(record[1]), (int(str(record[2])), str(record[3])))
        elif kind == "-":
            self._settled(str(record[1]))
            self._drop(str(record[1]))
        elif kind == "f":
            self._forget_file(str(record[1]))
        elif kind == "V":
            self._digests_version = int(str(record[1]))
        else:
            raise ValueError(f"unknown record {kind!r}")

    def _convert_whole_file_digests(self) -> None:
        """Name every file over one chunk the way `replicator.hashing` does now, where the file
        holds what the old digest (xxh3-128 of the whole content) says; see the module."""
        converted: dict[tuple[str, Expected], Expected] = {}

        def convert(rel: str, expected: Expected) -> Expected:
            size, old = expected
            if size <= CHUNK_SIZE:
                return expected  # the same either way
            if (rel, expected) not in converted:
                data = read_file_under(self.path.parent, rel)
                converted[(rel, expected)] = (
                    (size, digest(data).hex()) if data is not None and len(data) == size
                    and xxhash.xxh3_128_hexdigest(data) == old else expected)
            return converted[(rel, expected)]

        for rel, expected in list(self.files.items()):
            self.files[rel] = convert(rel, expected)
        for rel, states in self.uncertain.items():
            states[:] = [None if s is None else convert(rel, s) for s in states]
        self._upgraded = True
        log.info("%s: written before files over %d bytes were named by their chunks' digests: "
                 "%d converted", self.path, CHUNK_SIZE,
                 sum(old != new for (_rel, old), new in converted.items()))

    # -- the receiver's side ---------------------------------------------------------------
    def begin(self, changes: list[Change]) -> int:
        """Record, with one write, what a batch is about to make visible; its id. A batch
        that changes no file (directories only) is not recorded: id 0, nothing to settle."""
        if not changes:
            return 0
        batch = self._next_id
        record = ["B", batch, [[rel, *new] if new else [rel] for rel, new in changes]]
        self._pending.append(json.dumps(record))
        try:
            self._write_pending()
        except OSError:  # not recorded (a full filesystem): the batch must not go ahead
            self._pending.pop()
            raise
        self._next_id += 1
        self._begin(batch, changes)
        return batch

    def commit(self, batch: int) -> None:
        """The batch's changes are visible: its mark goes out with the next write (the next
        batch's record: one write per batch). Until then a reader accepts the batch's files
        in their old or new state, and a restarted receiver settles which one they hold."""
        if batch == 0:  # not recorded: see begin
            return
        self._commit(batch)
        self._marks.append(f'["C", {batch}]')  # json.dumps(["C", batch]), without its cost

    def open_batches(self) -> set[int]:
        """Ids of the batches recorded without their commit mark."""
        return set(self._open)

    def settle(self, holds: Callable[[str], Expected | None]) -> list[str]:
        """For every batch without its commit mark (a crash, a failed rename), record what
        each of its files holds now (`holds(rel)`), if that is its old or its new state;
        returns the files that hold neither (damage: the journal keeps expecting the new)."""
        damaged = []
        for rel, states in sorted(self.uncertain.items()):
            found = holds(rel)
            if found not in states:
                damaged.append(rel)
            elif found is None:
                self.remove(rel)
            else:
                self.set(rel, *found)
        for batch in list(self._open):
            self.commit(batch)
        return damaged

    def set(self, rel: str, size: int, digest: bytes | str) -> None:
        hexdigest = digest if isinstance(digest, str) else digest.hex()
        self._settled(rel)
        self._set(rel, (size, hexdigest))
        self._pending.append(json.dumps(["+", rel, size, hexdigest]))

    def remove(self, rel: str) -> None:
        """Forget `rel` and, if it was a directory, everything below it."""
        self._settled(rel)
        self._drop(rel)
        self._pending.append(json.dumps(["-", rel]))

    def forget_file(self, rel: str) -> None:
        """Forget the file `rel` only (a file that stood where a directory now is: what is
        below that directory stays known)."""
        if self._forget_file(rel):
            self._pending.append(json.dumps(["f", rel]))

    def flush(self) -> None:
        if self._upgraded and not self._open:
            self._rewrite()
            self._upgraded = False
            return
        if not self._pending:
            if not self.exists:  # a replica with no files yet is verifiable (and empty)
                self.path.touch()
                self.exists = True
            return
        if not self._open and self._lines + len(self._pending) > 2 * len(self.files) + 1000:
            self._rewrite()
        else:
            self._write_pending()

    # -- in memory ---------------------------------------------------------------------------
    def _begin(self, batch: int, changes: list[Change]) -> None:
        touched = []
        for rel, new in changes:
            olds = [(key, self.files.get(key)) for key in self._under(rel)] if new is None \
                else [(rel, self.files.get(rel))]
            for key, old in olds:
                states = self.uncertain.setdefault(key, [])
                states += [s for s in (old, new if key == rel else None) if s not in states]
                touched.append(key)
            if new is None:
                self._drop(rel)
            else:
                self._set(rel, new)
        self._open[batch] = touched

    def _commit(self, batch: int) -> None:
        for rel in self._open.pop(batch, []):
            if not any(rel in files for files in self._open.values()):
                self.uncertain.pop(rel, None)

    def _settled(self, rel: str) -> None:
        """A definitive record for `rel` (and below): no longer old-or-new."""
        if self.uncertain:
            prefix = rel + "/"
            for key in [k for k in self.uncertain if k == rel or k.startswith(prefix)]:
                del self.uncertain[key]

    def _forget_file(self, rel: str) -> bool:
        self._settled(rel)
        if self.files.pop(rel, None) is None:
            return False
        self._count(rel, -1)
        return True

    def _under(self, rel: str) -> list[str]:
        """`rel` itself and, if it is a directory, every file below it."""
        if rel not in self._below:
            return [rel]
        prefix = rel + "/"
        return [rel, *(k for k in self.files if k.startswith(prefix))]

    def _set(self, rel: str, expected: Expected) -> None:
        if rel in self._below:  # a file where a directory was: nothing is below it now
            self._drop(rel)
        if rel not in self.files:
            self._count(rel, 1)
        self.files[rel] = expected

    def _drop(self, rel: str) -> None:
        """Forget `rel` and everything below it (a scan of all files only if it is a directory
        holding some: the common case, one file, costs one lookup)."""
        if self.files.pop(rel, None) is not None:
            self._count(rel, -1)
        if rel in self._below:
            prefix = rel + "/"
            for key in [k for k in self.files if k.startswith(prefix)]:
                del self.files[key]
                self._count(key, -1)

    def _count(self, rel: str, delta: int) -> None:
        count_below(self._below, rel, delta)

    # -- on disk -----------------------------------------------------------------------------
    def _write_pending(self) -> None:
        lines = self._marks + self._pending
        data = ("\n".join(lines) + "\n").encode()
        if self._fd is None:  # kept open: the receiver writes once or twice per batch
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                               0o600)
        size = os.fstat(self._fd).st_size
        if size == 0:  # a new journal says which digests it holds
            data = f"{_VERSION_LINE}\n".encode() + data
        try:  # one write; one that fails part way is cut back: no torn line stays
            if os.write(self._fd, data) != len(data):
                raise OSError(errno.ENOSPC, f"short write to {self.path}")
        except OSError:
            os.ftruncate(self._fd, size)
            raise
        self._lines += len(lines)
        self._pending, self._marks = [], []
        self.exists = True

    def _rewrite(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(_VERSION_LINE + "\n")
            for rel, (size, hexdigest) in self.files.items():
                f.write(json.dumps(["+", rel, size, hexdigest]) + "\n")
        os.replace(tmp, self.path)
        self.close()  # the next write opens the new file
        self._lines = len(self.files)
        self._pending, self._marks = [], []
        self.exists = True


def _commit_mark(line: bytes) -> int:
    """The batch id of a commit mark line (`["C", <id>]`, as `commit` writes it), else 0.
    Read without the JSON parser: half the lines of a journal are marks."""
    if line.startswith(b'["C", ') and line.endswith(b"]"):
        number = line[6:-1]
        if number.isdigit():
            return int(number)
    return 0


def _changes(raw: object) -> list[Change]:
    """The changes of a `B` record; ValueError if it is not one."""
    if not isinstance(raw, list):
        raise ValueError("not a list of changes")
    changes: list[Change] = []
    for item in raw:
        if not isinstance(item, list) or len(item) not in (1, 3):
            raise ValueError(f"bad change {item!r}")
        new = (int(item[1]), str(item[2])) if len(item) == 3 else None
        changes.append((str(item[0]), new))
    return changes


def _lines(data: bytes) -> list[tuple[int, bytes, bool]]:
    """(offset, line, is the last one) of every line; a last line without its newline is
    torn and given as b"" (never parsed)."""
    out = []
    offset = 0
    while offset < len(data):
        end = data.find(b"\n", offset)
        if end < 0:
            out.append((offset, b"", True))
            break
        out.append((offset, data[offset:end], end + 1 == len(data)))
        offset = end + 1
    return out
