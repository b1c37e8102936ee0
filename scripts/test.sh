#!/usr/bin/env bash
# The test suite: real PostgreSQL servers, started and stopped by the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m pytest -q "$@"
