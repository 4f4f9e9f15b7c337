"""Study throughput: wall time and trials/hour of one fixed study with 1, 2, 4 worker processes on one device.

Each run starts from a fresh SQLite file, creates the study from the same study
file, and runs `fer-opt worker --gpu DEVICE --per-gpu N` until the study's trial
budget is spent. CPU workers split the cores between them.

    python benchmarks/study.py --device cpu --workers 1 2 --out study-cpu.json
    python benchmarks/study.py --device 0 --workers 1 2 4 --study-file studies/quick.yaml --out study-gpu.json

Prints and writes, per worker count: wall seconds, trials complete/pruned,
trials/hour, speed-up over 1 worker, and the peak host RSS / GPU memory of a worker.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parents[1]


def run(study_file: str, data: str, device: str, workers: int) -> dict:
    url = f"sqlite:///{tempfile.mkdtemp()}/study.db"
    cli = [sys.executable, "-m", "fer_optuna.cli"]
    subprocess.run([*cli, "create-study", "--config", study_file, "--storage", url, "--data", data], check=True,
                   cwd=ROOT, capture_output=True)
    t0 = time.perf_counter()
    subprocess.run([*cli, "worker", "--storage", url, "--gpu", device, "--per-gpu", str(workers),
                    "--checkpoint-dir", tempfile.mkdtemp()], check=True, cwd=ROOT, capture_output=True)
    wall = time.perf_counter() - t0
    trials = optuna.load_study(study_name=optuna.get_all_study_names(url)[0], storage=url).get_trials()
    count = lambda state: sum(t.state.name == state for t in trials)  # noqa: E731
    finished = count("COMPLETE") + count("PRUNED")
    return {"workers": workers, "wall_s": round(wall, 1), "complete": count("COMPLETE"), "pruned": count("PRUNED"),
            "failed": count("FAIL"), "trials_per_hour": round(finished / wall * 3600, 1),
            "host_peak_mb": max((t.user_attrs.get("host_peak_mb", 0) for t in trials), default=0),
            "gpu_peak_mb": max((t.user_attrs.get("gpu_peak_mb", 0) for t in trials), default=0),
            "best_val_accuracy": max((t.value for t in trials if t.value is not None), default=None)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study-file", default=str(ROOT / "studies" / "quick.yaml"))
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "fer2013.npz.xz"))
    parser.add_argument("--device", default="cpu", help="cpu or a GPU index")
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--out", default="benchmark-study.json")
    args = parser.parse_args()

    rows = []
    for n in args.workers:
        row = run(args.study_file, args.data, args.device, n)
        row["speedup"] = round(rows[0]["wall_s"] / row["wall_s"], 2) if rows else 1.0
        rows.append(row)
        print(f"{n} worker(s): {row['wall_s']} s, {row['complete']} complete + {row['pruned']} pruned "
              f"({row['failed']} failed), {row['trials_per_hour']} trials/h, speed-up {row['speedup']}x, "
              f"peak RSS {row['host_peak_mb']} MB, GPU {row['gpu_peak_mb']} MB", flush=True)
    best = max(rows, key=lambda r: r["trials_per_hour"])
    result = {"study_file": Path(args.study_file).name, "device": args.device, "rows": rows,
              "saturating_workers": best["workers"]}
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"fastest: {best['workers']} worker(s) per device; wrote {args.out}")


if __name__ == "__main__":
    main()
