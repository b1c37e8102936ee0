#!/usr/bin/env bash
# The test suite: real PostgreSQL servers, started and stopped by the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
if [ "$#" -gt 0 ] || [ ! -s .venv/pg18-bindir ]; then
  exec .venv/bin/python -m pytest -q "$@"
fi
# The whole suite on the distribution's PostgreSQL (15), then its core (tests marked
# `core` in tests/conftest.py: sandbox, backup, verify, PITR, find-disaster, failover,
# and the version and incremental tests) again on PostgreSQL 18.
.venv/bin/python -m pytest -q
PGDR_TEST_BINDIR=$(cat .venv/pg18-bindir) exec .venv/bin/python -m pytest -q -m core
