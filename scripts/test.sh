#!/usr/bin/env bash
# The test suite: real PostgreSQL servers, started and stopped by the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
if [ "$#" -gt 0 ]; then
  exec .venv/bin/python -m pytest -q "$@"
fi
if [ ! -s .venv/pg18-bindir ]; then
  echo "test.sh: no PostgreSQL 18 programs (.venv/pg18-bindir); scripts/bootstrap.sh installs them" >&2
  exit 2
fi
# The whole suite on the distribution's PostgreSQL (15; the incremental and version tests
# bring their own 18), then the suite's core (tests marked `core` in tests/conftest.py:
# sandbox, backup, verify, PITR, find-disaster, failover) again on PostgreSQL 18.
.venv/bin/python -m pytest -q
PGDR_TEST_BINDIR=$(cat .venv/pg18-bindir) exec .venv/bin/python -m pytest -q -m core
