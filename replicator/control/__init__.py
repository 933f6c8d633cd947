"""The local control socket: sync-commit flushes from the Dovecot plugin, and status."""
