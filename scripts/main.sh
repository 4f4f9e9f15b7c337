#!/usr/bin/env bash
# The main job: set up, then run a whole study on FER2013 and train the best model.
#   bash scripts/main.sh /path/to/fer2013.csv   (or an image folder, or a .npz)
# With GPUs: the fer2013-cnn3 study, workers on every GPU. CPU only: the quick study (both ship in the package).
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-${FER_OPT_DATA:-}}
if [ -z "$data" ]; then
  echo "usage: bash scripts/main.sh PATH_TO_FER2013 [fer-opt run options]" >&2
  echo "  PATH_TO_FER2013: the Kaggle fer2013.csv (.gz/.zip/.tar.gz), an image folder, or a .npz" >&2
  exit 2
fi
shift || true
data=$(realpath "$data")
bash scripts/setup.sh
exec .venv/bin/fer-opt run --data "$data" "$@"
