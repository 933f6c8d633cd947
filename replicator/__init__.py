"""dovecot-replicator: Dovecot index, cache and control files replicated into peers' RAM."""

__version__ = "0.1.0"
