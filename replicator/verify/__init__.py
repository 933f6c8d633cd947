"""Proving a replica right: byte and digest comparison, then Dovecot-level checks."""
