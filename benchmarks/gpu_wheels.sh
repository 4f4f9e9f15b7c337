#!/usr/bin/env bash
# Gets what benchmarks/gpu_check.sh needs on a device machine that has torch but no optuna
# and no network: the missing wheels in .whl/ and the data in .data/ (both git-ignored;
# carry both). Run it here, before the one device call:
#   bash benchmarks/gpu_wheels.sh [../shared/data]
# A call takes at most 64 MiB of working tree. Wheels and data are ~62 MB, so the shipped
# model (tracked, and not read by the GPU checks) must stay here for the call:
#   mv fer_optuna/weights/fer2013-best.pt /tmp/ ... (the call) ... git checkout fer_optuna/weights/fer2013-best.pt
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${1:-../shared/data}
PY=${PYTHON:-.venv/bin/python}
rm -rf .whl && mkdir -p .whl .data
# The versions this project is tested with, as pure-Python wheels (the device's Python is 3.12;
# SQLAlchemy's pure wheel is half the size of its compiled one).
# optuna-dashboard: create-study writes the study file as a dashboard note.
for pkg in optuna==5.0.0 sqlalchemy==2.1.9 alembic==1.20.1 colorlog==6.12.0 mako==1.4.3 \
    optuna-dashboard==0.21.0 bottle==0.13.4; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --platform any -d .whl "$pkg"
done
# Not the processed edition too (the tree would pass 64 MiB): models come back and are
# scored on both editions here, with benchmarks/editions.py.
cp "$SHARED/fer2013.npz.xz" .data/
du -sh .whl .data
tree=$(git ls-files -z | grep -zv '^models/.*\.pt$' | xargs -0 cat | wc -c)
echo "working tree that would travel without models/*.pt: $(( (tree + $(cat .whl/* .data/* | wc -c)) / 1048576 )) MiB (limit 64)"
