"""The whole replication core, without sockets: random file changes of the kinds Dovecot makes
(appends, in-place rewrites (of a log, only its header, as Dovecot does), temp+rename, log
rotation by hard link, deletes, new and removed directories, renamed directories), shipped
through the real batcher, outbox frames, session and replica store, with receiver restarts and
replica corruption thrown in. After every flush the replica equals the origin byte for byte
(once corruption has been repaired by a resync); after a sync commit's flush, every file of its
directories but indexes (which may trail their logs) does."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from replicator.capture.basecache import BaseCache
from replicator.capture.manifest import Manifest
from replicator.delta.ops import OpCode
from replicator.dovecot.filekinds import APPEND_MOSTLY, TRAILING_KINDS, classify
from replicator.replica.store import ReplicaStore
from replicator.sender.batcher import Batcher
from replicator.sender.outbox import Outbox
from replicator.verify.trees import compare_trees
from replicator.wire.messages import Auth, Batch, Hello
from replicator.wire.session import Session

DIRS = ["u1", "u1/.Sent", "u1/storage", "u2"]
NAMES = ["dovecot.index", "dovecot.index.log", "dovecot.index.cache", "dovecot-uidlist",
         "subscriptions"]
LOGS = ["dovecot.index.log", "dovecot-uidlist"]
data = st.binary(min_size=0, max_size=3000)


class Replication(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="repl-model-"))
        self.origin = self.tmp / "origin"
        self.origin.mkdir()
        self.manifest = Manifest()
        self.batcher = Batcher({"index": self.origin}, self.manifest, BaseCache(1 << 20))
        self.batcher.build({("index", ""): None}, record_only=True)
        self.outbox = Outbox("s1", 1, ["b"], retain_bytes=1 << 30, max_frame_bytes=8 << 20)
        self.client = Session("client")
        self._open_store()
        self.resynced = False
        self.delivered = 0
        self.corrupted = False

    def _open_store(self) -> None:
        self.store = ReplicaStore(self.tmp / "replica", self.tmp / "state", frozenset({"index"}),
                                  1 << 30)
        self.replica = self.store.origin("a")
        self.server = Session("server")
        self.client = Session("client")
        self.server.receive_data(self.client.send(Hello("a", "origin", "t", 1, "s1")))
        self.client.receive_data(self.server.send(Auth(nonce="0" * 64)))
        self.server.receive_data(self.client.send(Auth()))  # no key: see test_auth for proofs
        reply = self.server.send(Hello("b", "replica", "t", 0, self.replica.state.stream,
                                       self.replica.state.seq))
        self.client.receive_data(reply)

    def teardown(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _path(self, directory: str, name: str) -> Path:
        """`directory/name` ready to be written as a file (whatever stood in the way, gone)."""
        path = self.origin / directory / name
        for above in reversed(path.relative_to(self.origin).parents):
            if (self.origin / above).is_file():
                (self.origin / above).unlink()
        if path.is_dir():
            shutil.rmtree(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    # -- what Dovecot does ------------------------------------------------------------------
    @rule(directory=st.sampled_from(DIRS), name=st.sampled_from(NAMES), content=data)
    def replace_via_rename(self, directory: str, name: str, content: bytes) -> None:
        tmp = self._path(directory, name + ".tmp")
        tmp.write_bytes(content)
        os.rename(tmp, self._path(directory, name))

    @rule(directory=st.sampled_from(DIRS), name=st.sampled_from(NAMES), content=data)
    def append(self, directory: str, name: str, content: bytes) -> None:
        with open(self._path(directory, name), "ab") as f:
            f.write(content)

    @rule(directory=st.sampled_from(DIRS[:2]), name=st.sampled_from(LOGS),
          size=st.integers(1, 6000), seed=st.integers(0, 255))
    def append_records(self, directory: str, name: str, size: int, seed: int) -> None:
        """A busy log: records appended until it is long enough to be read from its end."""
        with open(self._path(directory, name), "ab") as f:
            f.write(bytes((seed + i) % 256 for i in range(size)))

    @rule(directory=st.sampled_from(DIRS), name=st.sampled_from(NAMES), content=data,
          offset=st.integers(0, 5000))
    def overwrite_in_place(self, directory: str, name: str, content: bytes, offset: int) -> None:
        if classify(name) in APPEND_MOSTLY:  # Dovecot rewrites a log's header, never its body
            offset, content = offset % 40, content[:40]
        path = self._path(directory, name)
        with open(path, "r+b" if path.exists() else "wb") as f:
            f.seek(offset)
            f.write(content)

    @rule(directory=st.sampled_from(DIRS))
    def rotate_log(self, directory: str) -> None:
        log = self._path(directory, "dovecot.index.log")
        if log.is_file():
            old = self._path(directory, "dovecot.index.log.2")
            old.unlink(missing_ok=True)
            os.link(log, old)
            new = self._path(directory, "dovecot.index.log.newlock")
            new.write_bytes(b"new log header")
            os.rename(new, log)

    @rule(directory=st.sampled_from(DIRS))
    def backup_index(self, directory: str) -> None:
        index = self._path(directory, "dovecot.index")
        if index.is_file():
            backup = self._path(directory, "dovecot.index.backup")
            backup.unlink(missing_ok=True)
            os.link(index, backup)

    @rule(directory=st.sampled_from(DIRS), content=data)
    def rewrite_index_keeping_backup(self, directory: str, content: bytes) -> None:
        """sdbox/mdbox: unlink the old backup, hard-link the index to it, rename a new index in
        (inode numbers freed by the unlink are often reused at once)."""
        index = self._path(directory, "dovecot.index")
        if index.is_file():
            backup = self._path(directory, "dovecot.index.backup")
            backup.unlink(missing_ok=True)
            os.link(index, backup)
        tmp = self._path(directory, "dovecot.index.tmp")
        tmp.write_bytes(content)
        os.rename(tmp, index)

    @rule(directory=st.sampled_from(DIRS), name=st.sampled_from(NAMES))
    def delete(self, directory: str, name: str) -> None:
        path = self.origin / directory / name
        if path.is_file():
            path.unlink()

    @rule(directory=st.sampled_from(DIRS[1:]))
    def delete_mailbox(self, directory: str) -> None:
        shutil.rmtree(self.origin / directory, ignore_errors=True)

    @rule(directory=st.sampled_from(["u1/.Sent", "u2"]))
    def rename_mailbox(self, directory: str) -> None:
        source = self.origin / directory
        target = self.origin / (directory + "-renamed")
        if source.is_dir() and not target.exists():
            os.rename(source, target)

    @rule(directory=st.sampled_from(DIRS), name=st.sampled_from(NAMES))
    def replace_file_by_directory(self, directory: str, name: str) -> None:
        """Not something Dovecot does to its own files, but a name may change kind."""
        path = self._path(directory, name)
        if path.is_file():
            path.unlink()
            (path / "dovecot.index").mkdir(parents=True)
            (path / "dovecot.index.log").write_bytes(b"log in a directory that was a file")

    @rule(directory=st.sampled_from(DIRS[1:]))
    def replace_directory_by_file(self, directory: str) -> None:
        path = self.origin / directory
        if path.is_dir():
            shutil.rmtree(path)
            path.write_bytes(b"file where a directory was")

    # -- what can go wrong on the replica ----------------------------------------------------
    @rule()
    def restart_receiver(self) -> None:
        self._open_store()

    @precondition(lambda self: not self.corrupted)
    @rule(index=st.integers(0, 1000))
    def corrupt_a_replica_file(self, index: int) -> None:
        files = sorted(p for p in (self.tmp / "replica" / "a" / "index").rglob("*")
                       if p.is_file())
        if files:
            victim = files[index % len(files)]
            victim.write_bytes(victim.read_bytes() + b"!")
            self.corrupted = True
            self._open_store()  # forget cached digests, as a real restart would

    @precondition(lambda self: not self.corrupted)
    @rule(index=st.integers(0, 1000))
    def replace_a_replica_directory_by_a_file(self, index: int) -> None:
        """What an interrupted or buggy write could leave: the receiver must put the
        directory back instead of refusing every later batch for it."""
        top = self.tmp / "replica" / "a" / "index"
        dirs = sorted(p for p in top.rglob("*") if p.is_dir())
        if dirs:
            victim = dirs[index % len(dirs)]
            shutil.rmtree(victim)
            victim.write_bytes(b"not a directory")
            self.corrupted = True
            self._open_store()

    @precondition(lambda self: not self.corrupted)
    @rule(index=st.integers(0, 1000))
    def replace_a_replica_file_by_a_directory(self, index: int) -> None:
        top = self.tmp / "replica" / "a" / "index"
        files = sorted(p for p in top.rglob("*") if p.is_file())
        if files:
            victim = files[index % len(files)]
            victim.unlink()
            (victim / "stray").mkdir(parents=True)
            self.corrupted = True
            self._open_store()

    # -- shipping ------------------------------------------------------------------------------
    @rule()
    def flush(self) -> None:
        keys = {("index", "")} | {("index", d) for d in _all_dirs(self.origin)}
        keys |= {("index", reldir) for reldir, _ in self.manifest.dirs("index")}
        result = self.batcher.build({key: set() for key in keys})
        assert not result.busy
        if not self.resynced:
            self._resync_from_manifest()
        for draft in result.drafts:
            self.outbox.add(draft)
        self._deliver()
        if self.corrupted:
            self._resync_from_manifest()
            self.corrupted = False
        assert compare_trees(self.origin, self.tmp / "replica" / "a" / "index").consistent
        self._journal_matches_the_replica()

    @precondition(lambda self: self.resynced and not self.corrupted)
    @rule(directory=st.sampled_from(DIRS[:2]), name=st.sampled_from(LOGS),
          size=st.integers(1, 3000), seed=st.integers(0, 255))
    def sync_commit(self, directory: str, name: str, size: int, seed: int) -> None:
        """A commit appends to a log, then its plugin's FLUSH reads the tails."""
        self.append_records(directory, name, size, seed)
        self.flush_for_commit([directory])

    @precondition(lambda self: self.resynced and not self.corrupted)
    @rule()
    def flush_for_commit(self, dirs: list[str] | None = None) -> None:
        """A sync commit's flush of `dirs` (default: all known): everything but index and
        backup rewrites, or nothing at all."""
        known = [reldir for reldir, _ in self.manifest.dirs("index")]
        result = self.batcher.build_for_commit({("index", d) for d in dirs or known})
        if result is None:
            return
        for draft in result.drafts:
            assert not any(classify(op.path.rpartition("/")[2]) in TRAILING_KINDS
                           for op in draft.ops if op.code != OpCode.DELETE)
            self.outbox.add(draft)
        self._deliver()
        replica = self.tmp / "replica" / "a" / "index"
        for reldir in dirs or known:
            assert _durable_files(replica / reldir) == _durable_files(self.origin / reldir)
        self._journal_matches_the_replica()

    def _journal_matches_the_replica(self) -> None:
        """The digest journal (what verify and promote trust) describes the replica exactly,
        also when read back from disk as a restarted receiver would."""
        from replicator.manifest_codec import tree_entries
        from replicator.replica.journal import DigestJournal

        actual = {f"index/{e.path}": (e.size, e.digest)
                  for e in tree_entries(self.replica.base, ["index"]) if e.kind == "f"}
        assert self.replica.journal.files == actual
        assert DigestJournal(self.replica.base / ".digests").files == actual

    def _resync_from_manifest(self) -> None:
        from replicator.manifest_codec import (
            decode_entries,
            diff,
            encode_entries,
            origin_entries,
            tree_entries,
        )
        theirs = decode_entries(encode_entries(tree_entries(self.replica.base, ["index"])))
        untrusted = diff(origin_entries(self.manifest), theirs)
        start = self.outbox.next_seq
        for draft in self.batcher.build({}, untrusted).drafts:
            draft.resync = True
            self.outbox.add(draft)
        self.replica.resync("s1", start, 1)
        self.delivered = start - 1
        self.resynced = True
        self._deliver()

    def _deliver(self) -> None:
        pending = self.outbox.after(self.delivered)
        assert pending is not None
        for numbered in pending:
            for frame in numbered.frames:
                for message in self.server.receive_data(frame):
                    assert isinstance(message, Batch)
                    outcome = self.replica.receive(message)
                    if outcome is not None and not outcome.ok:
                        self._nack(message)
            self.delivered = numbered.seq
        self.replica.save_state()

    def _nack(self, batch: Batch) -> None:
        assert self.corrupted, f"batch {batch.seq} for {batch.dir!r} refused without corruption"
        key = (batch.root, batch.dir)
        if self.outbox.nack("b", batch.seq, key):
            for draft in self.batcher.build({}, {key: None}).drafts:
                draft.resync = True
                self.outbox.add(draft)

    @invariant()
    def outbox_sequence_has_no_gaps(self) -> None:
        after = self.outbox.after(0)
        assert after is not None
        assert [b.seq for b in after] == list(range(1, self.outbox.next_seq))


def _durable_files(directory: Path) -> dict[str, bytes]:
    """The files of `directory` a sync commit waits for (not indexes, backups)."""
    if not directory.is_dir():
        return {}
    return {p.name: p.read_bytes() for p in directory.iterdir()
            if p.is_file() and classify(p.name) not in TRAILING_KINDS}


def _all_dirs(top: Path) -> list[str]:
    return [p.relative_to(top).as_posix() for p in top.rglob("*") if p.is_dir()]


Replication.TestCase.settings = settings(
    max_examples=int(os.environ.get("MODEL_EXAMPLES", "60")), stateful_step_count=30,
    deadline=None)
TestReplication = Replication.TestCase
