"""Harness shared by the tests, the demo and the benchmarks: real Dovecot, real IMAP, real daemons."""
