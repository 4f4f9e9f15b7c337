#!/usr/bin/env bash
# Sets up .venv, then runs the whole test suite (PostgreSQL is started by a fixture): a test process
# per core, each on one thread (tests/conftest.py), since many slow tests wait on processes, servers
# and a browser, and the suite's small batches gain little from a second thread (2 AVX2 cores: about
# 11 min against 19 one test at a time, docs/benchmarks.md). `-n 0` after it runs them one at a time.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -n auto --dist worksteal "$@"
