"""Our index, log, cache and uidlist readers on files written by Dovecot 2.3.19 and by 2.4.1,
against what each version's own `doveadm dump` said about them (tests/golden, written by
`python -m tests.golden.capture` on each version). Runs without Dovecot: every machine checks
both versions' formats, whichever Dovecot it has."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from replicator.dovecot.headers import parse_index, parse_log, parse_uidlist
from tests.golden.oracle import check_index, check_log, check_replay

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
CASES = sorted(p.parent for p in GOLDEN.glob("dovecot-*/*/oracle.json"))


def _oracle(case: Path) -> dict[str, Any]:
    return json.loads((case / "oracle.json").read_text())  # type: ignore[no-any-return]


def _id(case: Path) -> str:
    return f"{case.parent.name}-{case.name}"


def test_both_versions_and_all_formats_are_there() -> None:
    assert {_id(c) for c in CASES} == {f"dovecot-{v}-{f}" for v in ("2.3", "2.4")
                                       for f in ("maildir", "mdbox", "sdbox")}


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_index_and_cache_headers_match_doveadm_dump(case: Path) -> None:
    oracle = _oracle(case)
    assert oracle["index"], "the capture dumped no index file"
    for rel, dump in oracle["index"].items():
        index = case / "index" / rel
        cache = index.with_name(index.name + ".cache")
        check_index(index.read_bytes(), index.name, dump["header"], dump["extensions"],
                    dump["records"], cache.read_bytes() if cache.exists() else None,
                    dump["cache"])


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_every_log_record_matches_doveadm_dump(case: Path) -> None:
    oracle = _oracle(case)
    assert any(rel.endswith(".log.2") for rel in oracle["log"]), "no rotated log captured"
    for rel, dump in oracle["log"].items():
        log = case / "index" / rel
        check_log(log.read_bytes(), log.name, dump["header"], dump["records"])


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_replayed_next_uid_and_uidvalidity_match_dovecot(case: Path) -> None:
    oracle = _oracle(case)
    for rel, (next_uid, uid_validity) in oracle["replay"].items():
        box = case / "index" / rel
        index, log2 = box / "dovecot.index", box / "dovecot.index.log.2"
        check_replay(index.read_bytes() if index.exists() else None,
                     (box / "dovecot.index.log").read_bytes(),
                     lambda log2=log2: log2.read_bytes() if log2.exists() else None,
                     next_uid, uid_validity)


@pytest.mark.parametrize("case", [c for c in CASES if c.name == "maildir"], ids=_id)
def test_uidlist_matches_mailbox_status(case: Path) -> None:
    oracle = _oracle(case)
    for box, (messages, uidnext, uidvalidity, _modseq) in oracle["status"].items():
        uidlist = parse_uidlist((case / "control" / f".{box}" / "dovecot-uidlist").read_bytes())
        assert (uidlist.uid_validity, uidlist.effective_next_uid) == (uidvalidity, uidnext)
        assert uidlist.records_count >= messages  # expunged lines go lazily


def test_the_two_versions_write_the_same_format_versions() -> None:
    """What 2.4.1 writes, 2.3.19 reads and the other way round: same index, log and cache
    format versions (the premise of replicating between a 2.3 and a 2.4 node)."""
    seen: dict[str, set[tuple[str, ...]]] = {}
    for case in CASES:
        for rel in _oracle(case)["index"]:
            h = parse_index((case / "index" / rel).read_bytes()).header
            seen.setdefault(case.parent.name, set()).add(
                ("index", f"{h.major_version}.{h.minor_version}"))
        for rel in _oracle(case)["log"]:
            h2 = parse_log((case / "index" / rel).read_bytes()).header
            seen[case.parent.name].add(("log", f"{h2.major_version}.{h2.minor_version}"))
    assert seen["dovecot-2.3"] == seen["dovecot-2.4"] == {("index", "7.3"), ("log", "1.3")}
