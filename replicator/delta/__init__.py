"""Deltas: the operations that turn a replica file into the origin's current version."""
