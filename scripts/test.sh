#!/usr/bin/env bash
# Sets up .venv, then runs the whole test suite (PostgreSQL is started by a fixture).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
