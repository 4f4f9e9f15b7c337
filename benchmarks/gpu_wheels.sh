#!/usr/bin/env bash
# Gets what benchmarks/gpu_check.sh needs on a device machine that has torch but no optuna
# and no network: the missing wheels in .whl/ and the data in .data/ (both git-ignored;
# carry both). Run it here, before the one device call:
#   bash benchmarks/gpu_wheels.sh [../shared/data]
# then, on the device (carry .whl and .data):
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
#   bash benchmarks/gpu_check.sh $OUT .data/fer2013.npz.xz
# A call takes at most 64 MiB of working tree: the data and wheels are ~62 MB, so move
# models/fer2013-best.pt aside for the call (the GPU checks do not read it).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${1:-../shared/data}
PY=${PYTHON:-.venv/bin/python}
rm -rf .whl && mkdir -p .whl .data
# The versions this project is tested with; the device's Python is 3.12.
for pkg in optuna==5.0.0 sqlalchemy==2.1.9 alembic==1.20.1 colorlog==6.12.0 mako==1.4.3; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "$pkg"
done
cp "$SHARED/fer2013.npz.xz" .data/
du -sh .whl .data
echo "working tree that would travel: $(( ($(git ls-files -z | xargs -0 cat | wc -c) + $(cat .whl/* .data/* | wc -c)) / 1048576 )) MiB (limit 64)"
