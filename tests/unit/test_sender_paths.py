"""What the sender reads is proven to lie below a root: the FLUSH path mapping, the directory
scan, and the batches that leave (a receiver refuses any other, and a refused batch must not
stall the link)."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replicator.capture.pipeline import Capture
from replicator.capture.snapshot import scan_dir
from replicator.delta.ops import OpCode
from replicator.errors import PathError
from replicator.paths import check_relpath, wire_path_under
from replicator.sender.batcher import DirKey, Draft
from replicator.sender.outbox import Outbox
from replicator.sync_commit import SyncCommit

SECRET = b"root-only secret\n"


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """base/root holds real directories and symlinks pointing out of and inside the root;
    base/outside holds a secret."""
    base = tmp_path_factory.mktemp("tree")
    root = base / "root"
    (root / "u1" / "box").mkdir(parents=True)
    (root / "u1" / "box" / "dovecot.index.log").write_bytes(b"log")
    (base / "outside" / "box").mkdir(parents=True)
    (base / "outside" / "secret").write_bytes(SECRET)
    (base / "outside" / "box" / "dovecot.index").write_bytes(SECRET)
    (root / "u1" / "out").symlink_to(base / "outside")
    (root / "u1" / "loop").symlink_to(root / "u1")
    (root / "evil").symlink_to(base / "outside")
    (root / "u1" / "box" / "leak").symlink_to(base / "outside" / "secret")
    return base


COMPONENTS = st.sampled_from(["..", ".", "", "u1", "box", "out", "loop", "evil", "root",
                              "outside", "secret", "leak", "new"])


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts=st.lists(COMPONENTS, max_size=8), anchored=st.booleans())
def test_a_mapped_flush_path_never_leaves_the_root(tree: Path, parts: list[str],
                                                   anchored: bool) -> None:
    root = tree / "root"
    path = (f"{root}/" if anchored else f"{tree}/") + "/".join(parts)
    try:
        rel = wire_path_under(root, path)
    except PathError:
        return
    if rel is None:
        return
    assert check_relpath(rel, allow_empty=True) == rel
    assert ".." not in rel.split("/")
    resolved = os.path.realpath(os.path.join(root, rel))
    assert resolved == str(root) or resolved.startswith(f"{root}/"), (path, rel, resolved)
    current = root
    for part in rel.split("/") if rel else []:  # no existing component is a symlink
        current = current / part
        assert not current.is_symlink(), (path, rel)


@pytest.mark.parametrize("path", ["{root}/../outside", "{root}/u1/../../outside/secret",
                                  "{root}/u1/out", "{root}/u1/out/box", "{root}/evil",
                                  "{root}/u1/loop/box", "relative/u1", "{root}/u1\x00x"])
def test_escaping_flush_paths_are_refused(tree: Path, path: str) -> None:
    with pytest.raises(PathError):
        wire_path_under(tree / "root", path.format(root=tree / "root"))


def test_normal_flush_paths_map_to_their_wire_path(tree: Path) -> None:
    root = tree / "root"
    assert wire_path_under(root, f"{root}/u1/box") == "u1/box"
    assert wire_path_under(root, f"{root}//u1/./box/") == "u1/box"
    assert wire_path_under(root, f"{root}/u1/gone/later") == "u1/gone/later"
    assert wire_path_under(root, str(root)) == ""
    assert wire_path_under(root, f"{tree}/rootless/u1") is None
    assert wire_path_under(root, "/elsewhere") is None


def test_scan_refuses_a_reldir_that_is_not_a_wire_path(tree: Path) -> None:
    for reldir in ("../outside", "u1/../../outside", "/abs", "u1//box"):
        with pytest.raises(PathError):
            scan_dir(tree / "root", reldir, None, None)


@pytest.mark.parametrize("reldir", ["evil", "u1/out", "u1/out/box", "u1/loop/box"])
def test_scan_never_follows_a_symlinked_directory(tree: Path, reldir: str) -> None:
    scan = scan_dir(tree / "root", reldir, None, None)
    assert not scan.exists and not scan.reads


def test_scan_skips_symlinks_and_fifos_inside_a_directory(tree: Path) -> None:
    box = tree / "root" / "u1" / "box"
    fifo = box / "dovecot.index.cache"
    os.mkfifo(fifo)
    try:
        scan = scan_dir(tree / "root", "u1/box", None, None)  # a read of the fifo would hang
    finally:
        fifo.unlink()
    assert [r.name for r in scan.reads] == ["dovecot.index.log"]
    assert all(SECRET not in r.content for r in scan.reads)
    assert scan.subdirs == set()


def _capture(root: Path) -> Capture:
    return Capture({"index": root}, "inotify", 1 << 20, lambda drafts: None, Counter())


def test_bad_keys_are_dropped_before_anything_is_read(tree: Path) -> None:
    capture = _capture(tree / "root")
    result = capture.batcher.build({("index", "../outside"): None, ("index", "u1/out"): None,
                                    ("other", "u1"): None})
    assert all(SECRET not in op.data for d in result.drafts for op in d.ops)
    assert all(d.reldir in ("u1/out",) for d in result.drafts)


def test_a_resync_of_a_gone_unknown_directory_still_sends_a_batch(tree: Path) -> None:
    """Only an acknowledged resync batch clears a peer's broken mark: a directory that is gone
    (or a symlink) and was never shipped gets one deleting it; a key that is no wire path
    gets none and raises nothing."""
    capture = _capture(tree / "root")
    drafts = capture.resync({("index", "u1/gone"): None, ("index", "evil"): None,
                             ("index", "../outside"): None})
    assert sorted((d.reldir, [op.code for op in d.ops], d.resync) for d in drafts) == [
        ("evil", [OpCode.DELETE], True), ("u1/gone", [OpCode.DELETE], True)]


def test_a_nack_for_a_directory_never_sent_is_ignored() -> None:
    outbox = Outbox("s", 1, ["b"], retain_bytes=1 << 20, max_frame_bytes=1 << 20)
    outbox.add(Draft("index", "u1", []))
    assert outbox.nack("b", 1, ("index", "../x")) is False
    assert outbox.cursors["b"].broken == {}
    assert outbox.nack("b", 1, ("index", "u1")) is True


def test_a_tree_deeper_than_the_wire_allows_ships_only_what_a_receiver_accepts(
        tmp_path: Path) -> None:
    """Directories nested past MAX_PATH_BYTES (made relative to open descriptors, as a user
    can): the batches cover the shallow part and none carries a path the receiver refuses."""
    root = tmp_path / "root"
    root.mkdir()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(24):  # 24 x 201 bytes > 4096
            os.mkdir("d" * 200, dir_fd=fd)
            child = os.open("d" * 200, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            with open(os.open("dovecot.index", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=child),
                      "wb") as index:
                index.write(b"index")
            os.close(fd)
            fd = child
    finally:
        os.close(fd)
    drafts = _capture(root).batcher.build({("index", ""): None}).drafts
    paths = [op.path for d in drafts for op in d.ops] + [d.reldir for d in drafts]
    for path in paths:
        check_relpath(path, allow_empty=True)
    assert max(len(p) for p in paths) > 3500  # the shallow part did ship


def test_promotes_staging_and_backup_directories_are_never_shipped(tmp_path: Path) -> None:
    """Promote stages users in `.promote-<origin>-<epoch>/` at the top of a root and moves
    what they replace to `.promote-backup-...`: this node's own. Shipping them would send
    every staged file to the peers, and again once renamed into place."""
    root = tmp_path / "root"
    for rel in ("u1/box", ".promote-a-2/u2/box", ".promote-backup-a-2/u1/box"):
        (root / rel).mkdir(parents=True)
        (root / rel / "dovecot.index.log").write_bytes(rel.encode())
    capture = _capture(root)
    keys = {("index", ""): None, ("index", ".promote-a-2/u2/box"): None,
            ("index", ".promote-backup-a-2/u1"): None}
    drafts = capture.batcher.build(keys).drafts
    shipped = [d.reldir for d in drafts] + [op.path for d in drafts for op in d.ops]
    assert "u1/box/dovecot.index.log" in shipped
    assert not [p for p in shipped if ".promote-" in p], shipped


def _with_sync_commit(root: Path, check: Callable[[SyncCommit, Capture], None]) -> None:
    """`check(sync, capture)` with a started capture of `root` (inotify) and its SyncCommit."""
    async def scenario() -> None:
        capture = _capture(root)
        capture.start(asyncio.get_running_loop())
        outbox = Outbox("s", 1, [], retain_bytes=1 << 20, max_frame_bytes=1 << 20)
        try:
            check(SyncCommit({"index": root}, capture, outbox, {}, 1, Counter()), capture)
        finally:
            capture.stop()

    asyncio.run(scenario())


def test_a_flush_into_a_watched_directory_swapped_for_a_symlink_is_refused(
        tmp_path: Path) -> None:
    """keys_for skips its lstat calls for directories inotify watches. The mail user may
    move a watched directory away and put a symlink in its place between two FLUSHes: the
    next FLUSH naming it (or a directory below it) is still refused, nothing read."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "u1" / "mailboxes" / "INBOX").mkdir(parents=True)
    (outside / "INBOX").mkdir(parents=True)
    inbox = f"{root}/u1/mailboxes/INBOX"

    def check(sync: SyncCommit, capture: Capture) -> None:
        assert sync.keys_for((inbox,)) == {("index", "u1/mailboxes/INBOX"), ("index", "u1")}
        assert capture.watched(("index", "u1/mailboxes/INBOX"))  # the fast path was taken
        (root / "u1" / "mailboxes").rename(root / "u1" / "moved")
        (root / "u1" / "mailboxes").symlink_to(outside)
        for path in (inbox, f"{root}/u1/mailboxes"):
            with pytest.raises(PathError, match="symlink"):
                sync.keys_for((path,))
        assert not capture.watched(("index", "u1/mailboxes/INBOX"))

    _with_sync_commit(root, check)


def test_a_flush_proven_by_the_watches_is_proven_again_only_when_a_watch_changed(
        tmp_path: Path) -> None:
    """A mailbox's commits send the same FLUSH each time: its path proof, made from the
    watches alone, is kept until a watch is added or dropped. One made by lstat calls (a
    directory not watched) proves nothing for the next FLUSH and is never kept."""
    root = tmp_path / "root"
    (root / "u1" / "mailboxes" / "INBOX").mkdir(parents=True)
    inbox = f"{root}/u1/mailboxes/INBOX"
    looks: list[DirKey] = []

    def check(sync: SyncCommit, capture: Capture) -> None:
        watched = capture.watched

        def counted(key: DirKey) -> bool:
            looks.append(key)
            return watched(key)

        capture.watched = counted  # type: ignore[method-assign]
        expected = {("index", "u1/mailboxes/INBOX"), ("index", "u1")}
        assert sync.keys_for((inbox,)) == expected
        assert looks
        looks.clear()
        assert sync.keys_for((inbox,)) == expected
        assert looks == []  # kept: nothing looked at again
        (root / "u1" / "mailboxes" / "Sent").mkdir()  # a watch is added once its event is read
        assert sync.keys_for((inbox,)) == expected
        assert looks
        sent = ("index", "u1/mailboxes/Sent")

        def limited(key: DirKey) -> bool:  # as if the watch limit had left Sent unwatched
            looks.append(key)
            return key != sent and watched(key)

        capture.watched = limited  # type: ignore[method-assign]
        for _ in range(2):
            looks.clear()
            assert sent in sync.keys_for((f"{root}/u1/mailboxes/Sent",))
            assert sent in looks  # proven by lstat calls: proven again every time

    _with_sync_commit(root, check)


def test_a_kept_proof_of_a_missing_directory_ends_when_a_symlink_stands_there(
        tmp_path: Path) -> None:
    """mdbox names a CONTROL directory it never makes. Its proof (a watched ancestor, and
    one lstat finding nothing below it) is kept, but only while nothing is there: a symlink
    the mail user puts in its place (no watch changes for that) is refused at the next
    FLUSH, nothing read."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "u1").mkdir(parents=True)
    (outside / "INBOX").mkdir(parents=True)
    missing = f"{root}/u1/mailboxes/INBOX"
    expected = {("index", "u1/mailboxes/INBOX"), ("index", "u1")}

    def check(sync: SyncCommit, capture: Capture) -> None:
        assert sync.keys_for((missing,)) == expected
        assert sync.keys_for((missing,)) == expected
        (root / "u1" / "mailboxes").symlink_to(outside)
        with pytest.raises(PathError, match="symlink"):
            sync.keys_for((missing,))

    _with_sync_commit(root, check)


def test_a_flush_waits_for_mdbox_storage_exactly_when_it_is_a_directory(tmp_path: Path) -> None:
    """keys_for adds the user's storage/ (mdbox's map) when it is a real directory. Below a
    watched user directory the watcher says so without an lstat: a directory made there is
    watched once its event is read, a symlink (or a file) there never is."""
    root = tmp_path / "root"
    (root / "u1" / "mailboxes" / "INBOX").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    inbox = f"{root}/u1/mailboxes/INBOX"
    storage = ("index", "u1/storage")

    def check(sync: SyncCommit, capture: Capture) -> None:
        assert storage not in sync.keys_for((inbox,))  # none yet
        (root / "u1" / "storage").symlink_to(tmp_path / "elsewhere")
        assert storage not in sync.keys_for((inbox,))  # a symlink is not one
        (root / "u1" / "storage").unlink()
        (root / "u1" / "storage").mkdir()
        assert storage in sync.keys_for((inbox,))  # made: watched once its event is read
        assert capture.watched(storage)

    _with_sync_commit(root, check)


def test_an_unlisted_read_never_follows_a_named_symlink_or_opens_a_named_fifo(
        tmp_path: Path) -> None:
    """A commit's read of a directory inotify watches looks only at the names its events
    carried. The mail user replaces the log by a symlink to a root-only secret and makes a
    fifo named like the cache: both names come with events, neither is followed or opened
    (a read of the fifo would hang), and the log is shipped as gone."""
    root = tmp_path / "root"
    box = root / "u1" / "box"
    box.mkdir(parents=True)
    (box / "dovecot.index.log").write_bytes(b"log")
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    secret.chmod(0o600)
    emitted: list[Draft] = []
    key = ("index", "u1/box")

    async def scenario() -> None:
        capture = Capture({"index": root}, "inotify", 1 << 20, emitted.extend, Counter())
        capture.start(asyncio.get_running_loop())
        capture.flush()
        try:
            (box / "dovecot.index.log").unlink()
            (box / "dovecot.index.log").symlink_to(secret)
            os.mkfifo(box / "dovecot.index.cache")
            emitted.clear()
            capture.drain_events()
            assert key in capture._named  # the read below is the unlisted one
            assert capture.flush_for_commit({key})
            assert capture.counters["unlisted_reads"] == 1
        finally:
            capture.stop()

    asyncio.run(scenario())
    assert all(SECRET not in op.data for d in emitted for op in d.ops)
    assert [(op.code, op.path) for d in emitted for op in d.ops] == \
        [(OpCode.DELETE, "u1/box/dovecot.index.log")]
