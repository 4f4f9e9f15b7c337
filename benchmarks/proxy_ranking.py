"""Does a proxy rank configurations as the full data does? Takes the complete trials of a study run
on the full data, trains each trial's parameters the way a proxy study file's trials are trained
(its train: section, e.g. quick.yaml's 6,000/2,000 images and 3 epochs), and compares the orders:
Spearman's rank correlation, and where the full data's best lands in the proxy's order.

    python benchmarks/proxy_ranking.py --storage sqlite:///runs/cpu-study/study.db --proxy studies/quick.yaml
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import torch
from optuna.trial import TrialState

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fer_optuna.training import data, trainer  # noqa: E402
from fer_optuna.search import study  # noqa: E402
from fer_optuna.search import storage as fer_storage  # noqa: E402


def ranks(values: list[float]) -> np.ndarray:
    order = np.argsort(values)
    out = np.empty(len(values))
    out[order] = np.arange(len(values))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--storage", required=True, help="the full-data study's storage URL")
    parser.add_argument("--study", help="study name [default: the storage's only study]")
    parser.add_argument("--proxy", default="studies/quick.yaml", help="the study file whose train: section is the proxy")
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "fer2013.npz.xz"))
    parser.add_argument("--out", default="benchmark-proxy-ranking.json")
    args = parser.parse_args()

    storage = fer_storage.open_storage(args.storage)
    full = optuna.load_study(study_name=args.study or study.single_study_name(storage), storage=storage)
    proxy = study.load_spec(args.proxy).train
    loaded = data.load(args.data)
    rows = []
    for t in full.get_trials(states=(TrialState.COMPLETE,)):
        t0 = time.perf_counter()
        result = trainer.train(proxy.replace(**t.params), loaded, device=torch.device("cpu"), progress=False, log=None)
        rows.append({"trial": t.number, "params": t.params, "full": t.value, "proxy": result.best_val_acc,
                     "proxy_seconds": round(time.perf_counter() - t0, 1)})
        print(f"trial {t.number:>3}: full data {t.value:.4f}  proxy {result.best_val_acc:.4f}", flush=True)
    assert len(rows) >= 3, "needs at least 3 complete trials"
    full_r, proxy_r = ranks([r["full"] for r in rows]), ranks([r["proxy"] for r in rows])
    spearman = float(np.corrcoef(full_r, proxy_r)[0, 1])
    best = max(rows, key=lambda r: r["full"])
    place = sorted(rows, key=lambda r: -r["proxy"]).index(best) + 1
    result = {"full_study": full.study_name, "proxy": Path(args.proxy).name, "trials": len(rows),
              "spearman": round(spearman, 3), "full_best_trial": best["trial"], "its_place_on_the_proxy": place,
              "cpu_capability": torch.backends.cpu.get_cpu_capability(), "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"Spearman {spearman:.2f} over {len(rows)} configurations; the full data's best (trial {best['trial']}) "
          f"is number {place} on the proxy; wrote {args.out}")


if __name__ == "__main__":
    main()
