"""The receiving side of fencing tokens: refuse a batch from an owner that has been replaced.

Each batch carries its origin's token for the user of its directory (the etcd revision of
that user's owner key, DESIGN §10). This node keeps the newest token it has seen per user,
from batches and from its own view of etcd; a batch with an older one comes from a node that
lost the user (cut off, paused, or back after a failover) and is refused, counted, and logged
once per origin and user. Token 0 (no etcd) is only refused once a real token was seen.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from replicator.wire.messages import STALE_OWNER, Batch

log = logging.getLogger(__name__)


class TokenFence:
    def __init__(self) -> None:
        self.newest: dict[str, int] = {}
        # With etcd here: the revision of this node's newest view. A token above it is
        # accepted but not remembered until a view that high confirms it, so a peer cannot
        # poison a user with a huge token and lock its real owner out.
        self.ceiling: int | None = None
        self.refused: dict[str, int] = {}       # origin -> batches refused
        self._logged: set[tuple[str, str, int]] = set()

    def learn(self, tokens: Mapping[str, int], revision: int | None = None) -> None:
        """Tokens from this node's own view of etcd (at `revision`)."""
        if revision is not None:
            self.ceiling = max(self.ceiling or 0, revision)
        for user, token in tokens.items():
            if token > self.newest.get(user, 0):
                self.newest[user] = token

    def refusal(self, origin: str, batch: Batch) -> str | None:
        """Why `batch` must not be applied, or None (and its token is remembered)."""
        user = batch.dir.partition("/")[0]
        if not user:
            return None
        newest = self.newest.get(user, 0)
        if batch.token >= newest:
            if batch.token > newest and (self.ceiling is None or batch.token <= self.ceiling):
                self.newest[user] = batch.token
            return None
        self.refused[origin] = self.refused.get(origin, 0) + 1
        if (origin, user, batch.token) not in self._logged and len(self._logged) < 10000:
            self._logged.add((origin, user, batch.token))
            log.warning("refused batches from %s for %s: token %d is older than %d (another "
                        "node owns %s now); counted in status", origin, user, batch.token,
                        newest, user)
        return f"{STALE_OWNER} {batch.token} < {newest}"
