"""Data loading: first parse of a full-size Kaggle fer2013.csv (time and peak memory) and the cached load.

Builds a 35,887-row CSV in the Kaggle format from a prepared .npz (PublicTest rows
repeated as PrivateTest, so that all three Usage values are present), then parses it,
each contender in a fresh process with an empty cache, so that each peak resident
memory is its own:

- fer-optuna's `data.load`, then the cached load after it;
- a plain pandas reference: `pandas.read_csv` with the three columns typed, then one
  numpy conversion per row of the pixel strings (no validation);
- with `--before REV`, `data.load` as it was at that git revision, for a before/after figure.

    python benchmarks/data.py --before 7867cb7 --out data.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Each contender runs as `python -c CODE CSV`, prints its seconds and peak RSS.
MEASURE = """
import resource, sys, time
t0 = time.perf_counter()
{body}
seconds = time.perf_counter() - t0
print(round(seconds, 2), round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
"""
FER_OPTUNA = "from fer_optuna.training import data\nloaded = data.load(sys.argv[1])"
PANDAS = """import numpy as np, pandas as pd
frame = pd.read_csv(sys.argv[1], dtype={"emotion": "int64", "pixels": "string", "Usage": "category"})
images = np.stack([np.array(p.split(), np.uint8).reshape(48, 48) for p in frame["pixels"]])"""


def write_csv(npz: str, csv: Path) -> int:
    sys.path.insert(0, str(ROOT))
    from fer_optuna.training import data

    source = data.load(npz)
    rows = 0
    with open(csv, "w") as f:
        f.write("emotion,pixels,Usage\n")
        for split, usage in (("train", "Training"), ("val", "PublicTest"), ("val", "PrivateTest")):
            images, labels = source.split(split)
            for image, label in zip(images, labels):
                f.write(f"{label},{' '.join(map(str, image.ravel()))},{usage}\n")
                rows += 1
    return rows


# The installed package is found first (an editable install's finder); an older tree is imported by its path.
FROM_TREE = """import importlib.util
init = "{tree}/fer_optuna/__init__.py"
spec = importlib.util.spec_from_file_location("fer_optuna", init, submodule_search_locations=[init.rsplit("/", 1)[0]])
sys.modules["fer_optuna"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sys.modules["fer_optuna"])
"""


def measure(body: str, csv: Path, cache: Path, tree: Path | None = None) -> dict:
    if tree is not None:
        body = FROM_TREE.format(tree=tree) + body + "\nassert data.__file__.startswith(str(sys.argv[2]))"
    # The library caches under ~/.cache (a tree from before options.py read FER_OPT_CACHE): both point at `cache`.
    env = {**os.environ, "FER_OPT_CACHE": str(cache), "HOME": str(cache)}
    out = subprocess.run([sys.executable, "-c", MEASURE.format(body=body), str(csv), str(tree)], env=env, check=True,
                         capture_output=True, text=True).stdout.split()
    return {"seconds": float(out[-2]), "peak_rss_mb": int(out[-1])}


def checkout(rev: str, work: Path) -> Path:
    """The package as it was at `rev`, in a folder of its own."""
    tree = work / f"at-{rev}"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "fer_optuna"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--npz", default=str(ROOT.parent / "shared" / "data" / "fer2013.npz.xz"))
    parser.add_argument("--before", help="also measure data.load as it was at this git revision")
    parser.add_argument("--out", default="benchmark-data.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    csv = work / "fer2013.csv"
    rows = write_csv(args.npz, csv)
    result = {"csv_mb": round(csv.stat().st_size / 1e6, 1), "rows": rows}
    result["fer_optuna_first_parse"] = measure(FER_OPTUNA, csv, work / "cache-now")
    result["fer_optuna_cached_load"] = measure(FER_OPTUNA, csv, work / "cache-now")
    result["pandas_reference"] = measure(PANDAS, csv, work / "cache-pandas")
    if args.before:
        result[f"fer_optuna_at_{args.before}_first_parse"] = measure(FER_OPTUNA, csv, work / "cache-before",
                                                                     checkout(args.before, work))
    import torch  # the CPU kind, for the record

    result["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    print(json.dumps(result, indent=2))
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
