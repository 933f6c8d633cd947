"""Harness shared by tests, demo and benchmarks: real Dovecot, real IMAP, real daemons."""
