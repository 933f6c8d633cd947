"""This node's copies of its peers' roots, and the rules for accepting their batches.

Batches of one origin arrive numbered without gaps within the origin's current stream. A replay
of an applied seq is acknowledged again and changes nothing; a gap is a protocol error (the
origin reconnects and resumes). A batch that fails verification is NACKed and its directory is
marked broken: later batches for it are skipped (their base is wrong) until the origin's resync
batch for that directory repairs it. Batches from an epoch below the fence are refused.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from replicator.delta.apply import Budget
from replicator.delta.ops import Op
from replicator.errors import ApplyError, FencedError, PathError, ProtocolError
from replicator.hashing import digest
from replicator.paths import check_relpath, check_root_name
from replicator.replica.apply import ApplyStats, BatchApplier
from replicator.replica.beneath import make_private, read_file_under, write_back_under
from replicator.replica.digestcache import DigestCache
from replicator.replica.journal import DigestJournal
from replicator.replica.parts import BUDGET_FRAMES, Parts
from replicator.replica.space import SpaceGuard, is_full
from replicator.replica.state import AppliedState, Fences, InPlaceJson
from replicator.replica.tokens import TokenFence
from replicator.replica.undo import UndoLog, restored
from replicator.wire.messages import AWAITING_RESYNC, Batch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    seq: int
    ok: bool
    root: str = ""
    dir: str = ""
    reason: str = ""
    stats: ApplyStats | None = None
    full: bool = False  # refused because replica_dir is full


class OriginReplica:
    """replica_dir/<origin>: the copy of one origin's roots."""

    def __init__(self, base: Path, origin: str, roots: frozenset[str], staging: Path,
                 max_size: int, space: SpaceGuard, tokens: TokenFence | None = None) -> None:
        self.base, self.origin, self.roots = base, origin, roots
        self.tokens = tokens or TokenFence()
        self.state_path = base / ".applied.json"
        self.staging, self.max_size, self.space = staging, max_size, space
        make_private(base, 0o700)  # mail users own directories inside: keep them out
        self.state = AppliedState.load(self.state_path)
        self.state_file = InPlaceJson(self.state_path)
        self.persisted = self.state.copy()  # what HELLO may report: on disk, not in memory
        self.journal = DigestJournal(base / ".digests", repair=True)
        self.undo = UndoLog(base / ".undo")
        if self.journal.uncertain:
            self._settle_after_crash()
        self.digests = DigestCache()
        self.parts = Parts(BUDGET_FRAMES * max_size)  # bytes one batch may hold in memory
        self._unsaved = False

    def _settle_after_crash(self) -> None:
        """The receiver died between a batch's journal record and its commit mark: record
        what each of its files holds (its old or its new state). A file written in place and
        cut short by the kill holds neither: it is put back into its old state (replica.undo)
        where its old content can be rebuilt; anything else holding neither is damage, which
        verify reports and the origin's resend repairs."""
        images = self.undo.load(self.journal.open_batches())

        def holds(rel: str) -> tuple[int, str] | None:
            data = read_file_under(self.base, rel)
            if data is None:
                return None
            found = (len(data), digest(data).hex())
            accepted = self.journal.uncertain.get(rel, [])
            old = None if found in accepted else restored(data, accepted, images.get(rel))
            if old is not None:
                write_back_under(self.base, rel, old)
                log.warning("replica of %s: %s was cut short by the crash in the middle of an "
                            "in-place write; put back as it was before it", self.origin, rel)
                found = (len(old), digest(old).hex())
            return found
        damaged = self.journal.settle(holds)
        self.journal.flush()
        log.warning("replica of %s: settled a batch cut short by a crash%s", self.origin,
                    f"; damaged: {', '.join(damaged[:10])}" if damaged else
                    " (every file holds its old or its new content)")

    def resync(self, stream: str, seq: int, epoch: int) -> None:
        """The origin restarts our view of its stream: the next batch is `seq`."""
        self.state = AppliedState(stream, seq - 1, epoch, dict(self.state.broken),
                                  self.state.sync_policy)
        self.parts.clear()
        self._unsaved = True

    def receive(self, batch: Batch) -> Outcome | None:
        """Apply `batch` (or buffer one part of it); None while more parts must follow."""
        if batch.stream != self.state.stream:
            raise ProtocolError(f"batch of stream {batch.stream} before RESYNC (replica "
                                f"follows {self.state.stream or 'nothing'})")
        if batch.seq <= self.state.seq:
            return Outcome(batch.seq, True)  # replay after a reconnect: already applied
        if batch.seq != self.state.seq + 1:
            raise ProtocolError(f"batch seq {batch.seq} after {self.state.seq}: gap")
        self.parts.add(batch)
        if not batch.final:
            return None
        ops, refused, buffered = self.parts.take()
        if (stale := self.tokens.refusal(self.origin, batch)) is not None:
            outcome = Outcome(batch.seq, False, batch.root, batch.dir, stale)
        elif refused:
            outcome = self._refuse(batch, refused)
        else:
            outcome = self._apply(batch, ops, Budget(self.parts.budget, buffered))
        self.state.seq, self.state.epoch = batch.seq, batch.epoch
        self._unsaved = True
        return outcome

    def note_sync_policy(self, policy: str) -> None:
        if policy and policy != self.state.sync_policy:
            self.state.sync_policy = policy
            self._unsaved = True

    def forget_position(self) -> None:
        """Make the origin's next connection a manifest resync (after damage was found): it
        then compares what we hold with what it has and resends what differs."""
        self.state = AppliedState(epoch=self.state.epoch, sync_policy=self.state.sync_policy)
        self.state_file.save(self.state.as_json())
        self.persisted = self.state.copy()
        self.digests = DigestCache()
        self.parts.clear()

    def differs_from_journal(self, rel: str) -> bool:
        """Whether `rel` (root/path) differs from what the journal says it must hold, checked
        now. Called on the event loop, where no batch is half applied: a verification that ran
        in a thread beside the applier may have read a file as it was being replaced."""
        expected = self.journal.files.get(rel)
        data = read_file_under(self.base, rel)
        if data is None or expected is None:
            return (data is None) != (expected is None)
        return (len(data), digest(data).hex()) != expected

    def save_state(self) -> bool:
        """Record the digests of what changed, then how far we got; called before
        acknowledging (once per chunk of input). False if that could not be written: nothing
        may be acknowledged then, and the position falls back to the one on disk (batches
        after it are resent; replaying them finds what they already changed, and is refused
        and repaired)."""
        try:
            self._persist()
        except OSError:
            try:
                with self.space.released():
                    self._persist()
            except OSError as again:
                log.error("replica of %s: cannot record its state in %s: %s; acknowledging "
                          "nothing, the origin resends from seq %d", self.origin, self.base,
                          again.strerror or again, self.persisted.seq + 1)
                self.state = replace(self.persisted, broken=self.state.broken,
                                     why=self.state.why)
                self.parts.clear()
                return False
        return True

    def _persist(self) -> None:
        self.journal.flush()
        if self._unsaved:
            self.state_file.save(self.state.as_json())
            self._unsaved = False
            self.persisted = self.state.copy()

    def broken_dirs(self) -> list[str]:
        """`root/dir` of every directory awaiting a resend (what HELLO tells the origin)."""
        return [f"{root}/{reldir}" if reldir else root
                for root, reldir, _seq, _why in self.state.broken_dirs()]

    def _refuse(self, batch: Batch, reason: str) -> Outcome:
        if (misplaced := self._misplaced(batch)) is not None:
            return misplaced
        key = f"{batch.root}\0{batch.dir}"
        self.state.broken[key], self.state.why[key] = batch.seq, reason
        return Outcome(batch.seq, False, batch.root, batch.dir, reason)

    def _misplaced(self, batch: Batch) -> Outcome | None:
        """A refusal (NACK) for a batch addressed to no place we hold: an unknown root or a
        bad directory. Nothing is written and nothing is marked broken (there is no such
        directory to repair); the stream goes on, so one bad batch cannot stall the link."""
        try:
            check_root_name(batch.root, self.roots)
            check_relpath(batch.dir, allow_empty=True)
        except PathError as exc:
            log.warning("batch %d from %s refused: %s", batch.seq, self.origin, exc)
            return Outcome(batch.seq, False, batch.root, batch.dir, f"bad place: {exc}")
        return None

    def _apply(self, batch: Batch, ops: list[Op], budget: Budget) -> Outcome:
        if (misplaced := self._misplaced(batch)) is not None:
            return misplaced
        key = f"{batch.root}\0{batch.dir}"
        if key in self.state.broken and not batch.resync:
            return Outcome(batch.seq, False, batch.root, batch.dir, AWAITING_RESYNC)
        applier = BatchApplier(self.base / batch.root, self.staging, self.digests,
                               max_size=self.max_size, may_chown=os.geteuid() == 0,
                               journal=self.journal, root=batch.root, budget=budget,
                               undo=self.undo)
        try:
            stats = applier.apply(ops)
        except (ApplyError, OSError, MemoryError) as exc:  # OSError: e.g. the tmpfs is full
            full = isinstance(exc, OSError) and is_full(exc)
            if full:
                self.space.on_full(self.origin)
            reason = (f"replica filesystem full ({self.space.usage()})" if full else
                      str(exc) or type(exc).__name__)
            if applier.changed:
                reason += "; the batch was applied only in part"
            self.state.broken[key], self.state.why[key] = batch.seq, reason
            self.digests = DigestCache()  # a partial commit may have left any file changed
            return Outcome(batch.seq, False, batch.root, batch.dir, reason, full=full)
        self.state.broken.pop(key, None)
        self.state.why.pop(key, None)
        self.space.after_success()
        return Outcome(batch.seq, True, stats=stats)


class ReplicaStore:
    """Every origin's replica under `replica_dir`, plus the fences of promoted origins."""

    def __init__(self, replica_dir: Path, state_dir: Path, roots: frozenset[str],
                 max_size: int) -> None:
        self.replica_dir, self.roots, self.max_size = replica_dir, roots, max_size
        self.staging = replica_dir / ".staging"
        make_private(replica_dir, 0o755)  # the control socket may live here: others may enter
        for held in replica_dir.iterdir():  # copies from an earlier run: 0700 before any batch
            if held.is_dir() and not held.is_symlink() and not held.name.startswith("."):
                make_private(held, 0o700)
        shutil.rmtree(self.staging, ignore_errors=True)
        make_private(self.staging, 0o700)
        self.fences = Fences(state_dir / "fences.json")
        self.space = SpaceGuard(replica_dir, self.staging)
        self.tokens = TokenFence()  # newest fencing token per user, shared by every origin
        self._origins: dict[str, OriginReplica] = {}
        for held in sorted(replica_dir.iterdir()):
            if (held / ".applied.json").is_file():
                self._open_held(held.name)

    def _open_held(self, origin: str) -> None:
        """Open a replica found at start, settling what a crash left in it now: its origin
        may never connect again, and a promote of the copy needs it whole. One that cannot
        be opened is logged and left as it is (the daemon still starts)."""
        try:
            self.origin(origin)
        except (OSError, ValueError) as exc:
            log.error("replica of %s in %s cannot be opened (%s); left as it is until %s "
                      "connects", origin, self.replica_dir / origin, exc, origin)

    def origin(self, origin: str) -> OriginReplica:
        replica = self._origins.get(origin)
        if replica is None:
            replica = self._origins[origin] = OriginReplica(
                self.replica_dir / origin, origin, self.roots,
                self.staging / f"{origin}.tmp", self.max_size, self.space, self.tokens)
        return replica

    def origins(self) -> dict[str, OriginReplica]:
        """The origins whose replicas were here at start or arrived since."""
        return dict(self._origins)

    def check_epoch(self, origin: str, epoch: int, *, reload: bool = True) -> None:
        """FencedError if `origin` speaks for an epoch below its fence. `reload=False` trusts
        the fences read at the start of this chunk of input (a promote's fence comes from
        another process: one look per chunk sees it as soon as one per batch would, since
        nothing else runs between the batches of a chunk)."""
        if reload:
            self.fences.reload()
        fence = self.fences.minimum(origin)
        if epoch < fence:
            raise FencedError(f"origin {origin} speaks for epoch {epoch}, but this node fenced "
                              f"it at epoch {fence} (promoted); its batches are refused")
