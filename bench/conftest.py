"""Benchmarks are run by `make bench` (python -m bench.run), never by `make test`."""
