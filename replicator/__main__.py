"""`python -m replicator` runs the same command line as `dovecot-replicator`."""

from replicator.cli import main

raise SystemExit(main())
