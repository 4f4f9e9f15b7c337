"""Data loading: first parse of a full-size Kaggle fer2013.csv and the cached load after it.

Builds a 35,887-row CSV in the Kaggle format from the shared .npz (PublicTest rows
repeated as PrivateTest, so all three Usage values are present), then times
`data.load` on it with an empty cache, and again from the cache.

    python benchmarks/data.py --out data.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--npz", default=str(ROOT.parent / "shared" / "data" / "fer2013.npz.xz"))
    parser.add_argument("--out", default="benchmark-data.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    os.environ["FER_OPT_CACHE"] = str(work / "cache")
    from fer_optuna import data

    source = data.load(args.npz)
    csv = work / "fer2013.csv"
    with open(csv, "w") as f:
        f.write("emotion,pixels,Usage\n")
        for split, usage in (("train", "Training"), ("val", "PublicTest"), ("val", "PrivateTest")):
            images, labels = source.split(split)
            for image, label in zip(images, labels):
                f.write(f"{label},{' '.join(map(str, image.ravel()))},{usage}\n")
    t0 = time.perf_counter()
    parsed = data.load(csv)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    data.load(csv)
    cached = time.perf_counter() - t0
    result = {"csv_mb": round(csv.stat().st_size / 1e6, 1), "rows": sum(len(v) for v in parsed.labels.values()),
              "first_parse_s": round(first, 2), "cached_load_s": round(cached, 3)}
    print(json.dumps(result))
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
