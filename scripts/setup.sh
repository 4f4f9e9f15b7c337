#!/usr/bin/env bash
# Creates .venv and installs fer-optuna with its test and PostgreSQL extras.
# Idempotent: reinstalls only when pyproject.toml or constraints.txt changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 10), "fer-optuna needs Python 3.10+"'
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ "$(cat .venv/.fer-optuna-installed 2>/dev/null)" != "$stamp" ]; then
  echo "setup: installing fer-optuna into .venv (torch $(grep ^torch== constraints.txt | cut -d= -f3))" >&2
  .venv/bin/python -m pip install -qq --upgrade pip
  .venv/bin/python -m pip install -qq -c constraints.txt -e '.[dev,postgres]'
  echo "$stamp" > .venv/.fer-optuna-installed
fi
