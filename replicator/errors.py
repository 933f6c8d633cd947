"""The error types an operator can meet, each mapped to a one-line message and an exit code.

Every failure a user can cause or fix (a bad config, an unreachable peer, a refused promote) is a
`ReplicatorError`: the command line prints its message and exits with its code instead of showing a
traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class ReplicatorError(Exception):
    """A failure with a message meant for the operator."""

    exit_code = 2


class ConfigError(ReplicatorError):
    """The configuration file is missing, unreadable or inconsistent."""


class PathError(ReplicatorError):
    """A path from the wire or a tree is not one we accept (absolute, `..`, NUL, symlink, ...)."""


class ProtocolError(ReplicatorError):
    """The replication protocol was broken. `remote` says whether the peer or we broke it."""

    def __init__(self, message: str, *, remote: bool = True) -> None:
        super().__init__(message)
        self.remote = remote


class ApplyError(ReplicatorError):
    """A batch could not be applied to the replica (hash mismatch, missing base, full disk)."""


class FencedError(ReplicatorError):
    """A batch or connection came from an epoch that a promote has fenced off."""
