"""What a receiver killed in the middle of an in-place write needs to put the file back.

Appends and patches (a cache changed in a few places) are written into the visible file, so a
kill -9 between two of its writes leaves that file in neither its old nor its new state. The
digest journal knows both states of every file of a batch without its commit mark; on restart
the receiver (OriginReplica) puts such a file back into its old state:

* an append is cut back to the old size, if what precedes the cut is the old content;
* a patch gets its before-images back, written here (one write, replacing the previous
  batch's) after the batch's journal record and before its first in-place write, then is cut
  back to the old size, if the result is the old content.

Either way nothing is written unless the outcome is a state the journal accepts, so a record
of another batch, or a file damaged otherwise, is left as it is (damage, which the origin's
resend repairs).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from replicator.delta.apply import Patch
from replicator.hashing import digest
from replicator.replica.journal import Expected
from replicator.replica.rewritten import RewrittenFile

Images = tuple[int, list[tuple[int, bytes]]]  # old size, before-images in the order written


class UndoLog:
    """`<replica>/.undo`: the before-images of the last batch that patched files in place."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = RewrittenFile(path, 0o600)

    def record(self, batch: int, patches: dict[str, Patch]) -> None:
        """Replace the record with `batch`'s patches (journal names: `<root>/<path>`): a line
        `undo <length of the JSON>`, the JSON (batch, and per file its old size and each
        image's offset and length), then the images' bytes. One pwrite over the previous
        record, no truncation: its stale end is never read (freeing and allocating the pages
        of a record of a few KB on every commit cost more than the write)."""
        meta = json.dumps({"batch": batch, "files": {
            rel: [p.old_size, [[offset, len(image)] for offset, image in p.before]]
            for rel, p in patches.items()}}).encode()
        self._file.rewrite(b"".join([
            b"undo %d\n" % len(meta), meta,
            *(image for p in patches.values() for _, image in p.before)]))

    def load(self, batches: set[int]) -> dict[str, Images]:
        """The before-images recorded for one of `batches` (those without a commit mark);
        nothing if the record is of another batch, absent or unreadable."""
        try:
            data = self.path.read_bytes()
            line, _, rest = data.partition(b"\n")
            word, length = line.split()
            if word != b"undo":
                return {}
            record: Any = json.loads(rest[:int(length)])
            if int(record["batch"]) not in batches:
                return {}
            images, at = {}, int(length)
            for rel, (size, extents) in record["files"].items():
                before = []
                for offset, count in extents:
                    before.append((int(offset), rest[at:at + int(count)]))
                    at += int(count)
                images[str(rel)] = (int(size), before)
            return images if at <= len(rest) else {}
        except (OSError, ValueError, KeyError, TypeError):
            return {}

    def close(self) -> None:
        self._file.close()


def restored(data: bytes, accepted: list[Expected | None],
             images: Images | None) -> bytes | None:
    """The file's old content rebuilt from `data` (neither of its states): its before-images
    written back (a torn patch), or cut back to an accepted state's size (a torn append); None
    if neither gives a state the journal accepts."""
    candidates = []
    if images is not None:
        size, before = images
        content = bytearray(data)
        for offset, image in reversed(before):
            content[offset:offset + len(image)] = image
        del content[size:]
        candidates.append(bytes(content))
    candidates += [data[:state[0]] for state in accepted
                   if state is not None and state[0] < len(data)]
    for candidate in candidates:
        if (len(candidate), digest(candidate).hex()) in accepted:
            return candidate
    return None
