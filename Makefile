# dovecot-replicator — the two commands a newcomer runs (as root, Debian 12):
#   make demo   installs what it needs, runs two nodes on loopback, prints figures
#   make test   installs what it needs, runs the whole test suite
SHELL := /bin/bash
.DEFAULT_GOAL := help

# Debian's pyverbs imports only under Debian's own interpreter, so the venv is
# made from /usr/bin/python3 with --system-site-packages.
SYSTEM_PYTHON := /usr/bin/python3
VENV          := .venv
PY            := $(VENV)/bin/python
DEB_PACKAGES  := dovecot-imapd dovecot-core dovecot-dev python3-pyverbs rdma-core \
                 nftables iproute2 etcd-server python3-venv python3-pip gcc libc6-dev openssl procps
STAMP         := $(VENV)/.bootstrapped
PYTEST_ARGS   ?=

.PHONY: help bootstrap packages venv native bytecode demo test unit integration lint bench fuzz fuzz-deps clean

help:
	@echo "make demo       two real Dovecot nodes + replicators on loopback, workload, promote, verify, figures"
	@echo "make test       lint, type checks and the whole test suite"
	@echo "make bootstrap  only install what the project needs (idempotent)"
	@echo "make bench      benchmarks; writes bench/RESULTS.md and plots"
	@echo "make fuzz       >= 1 M inputs per decoder fuzz target; writes tests/fuzz/RESULTS.md"

bootstrap: packages $(STAMP) native bytecode

# Installs only the Debian packages that are missing, so a second run is quick.
packages:
	@missing=$$(for p in $(DEB_PACKAGES); do \
	    dpkg-query -W -f='$${db:Status-Abbrev}' $$p 2>/dev/null | grep -q '^ii' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    echo "installing Debian packages:" $$missing; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml | packages
	@test -x $(PY) || $(SYSTEM_PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,bench]'
	@touch $@

native: packages
	@if [ -f native/Makefile ]; then $(MAKE) -s -C native; fi

# The package's bytecode, compiled now (what is up to date is skipped): where Python may not
# write it at run time (PYTHONDONTWRITEBYTECODE, a read-only tree), every daemon start and
# every promote (and its helper process) compiled the package again, some 40-70 ms each.
bytecode: $(STAMP)
	@$(PY) -m compileall -q replicator >/dev/null

demo: bootstrap
	$(PY) -m replicator.demo

lint: bootstrap
	$(VENV)/bin/ruff check replicator tests bench
	$(VENV)/bin/mypy replicator

test: bootstrap lint
	$(PY) -m pytest $(PYTEST_ARGS)

unit: bootstrap
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

integration: bootstrap
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

bench: bootstrap
	$(PY) -m bench.run

# FUZZ_RUNS inputs per target (frame parser, op decoder, op codec, manifest, control line),
# coverage-guided by atheris where it installs, else the harness's own mutation fuzzer.
FUZZ_RUNS ?= 1000000
fuzz-deps: bootstrap
	$(PY) -m pip install -q --disable-pip-version-check -e '.[fuzz]' \
	    || echo "atheris did not install: fuzzing with the built-in mutation engine"

fuzz: fuzz-deps
	$(PY) -m tests.fuzz.run --runs $(FUZZ_RUNS) --results tests/fuzz/RESULTS.md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis build *.egg-info
	@if [ -f native/Makefile ]; then $(MAKE) -s -C native clean; fi
