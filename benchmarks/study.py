"""Study throughput: wall time and trials/hour of one fixed study with 1, 2, 4 worker processes on one device.

Each run starts from a fresh SQLite file, creates the study from the same study
file, and runs `fer-opt worker --gpu DEVICE --per-gpu N` until the study's trial
budget is spent. CPU workers split the cores between them.

    python benchmarks/study.py --device cpu --workers 1 2 --out study-cpu.json
    python benchmarks/study.py --device 0 --workers 1 2 4 --study-file studies/fer2013-cnn3.yaml --trials 8 --epochs 10 --out study-gpu.json
    python benchmarks/study.py --device cpu --workers 1 --pruner hyperband   # against the file's median pruner

Prints and writes, per worker count: wall seconds, trials complete/pruned,
trials/hour, speed-up over 1 worker, the epochs all trials ran, the best val accuracy,
and the peak host RSS / GPU memory of a worker.
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
import yaml

ROOT = Path(__file__).resolve().parents[1]


def fer_opt(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "fer_optuna.cli", *args], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"fer-opt {args[0]} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")


def run(study_file: str, data: str, device: str, workers: int) -> dict:
    url = f"sqlite:///{tempfile.mkdtemp()}/study.db"
    fer_opt("create-study", "--config", study_file, "--storage", url, "--data", data)
    t0 = time.perf_counter()
    fer_opt("worker", "--storage", url, "--gpu", device, "--per-gpu", str(workers), "--checkpoint-dir", tempfile.mkdtemp())
    wall = time.perf_counter() - t0
    trials = optuna.load_study(study_name=optuna.get_all_study_names(url)[0], storage=url).get_trials()
    count = lambda state: sum(t.state.name == state for t in trials)  # noqa: E731
    finished = count("COMPLETE") + count("PRUNED")
    return {"workers": workers, "wall_s": round(wall, 1), "complete": count("COMPLETE"), "pruned": count("PRUNED"),
            "failed": count("FAIL"), "trials_per_hour": round(finished / wall * 3600, 1),
            "epochs_run": sum(t.user_attrs.get("epochs_run", 0) for t in trials),
            "host_peak_mb": max((t.user_attrs.get("host_peak_mb", 0) for t in trials), default=0),
            "gpu_peak_mb": max((t.user_attrs.get("gpu_peak_mb", 0) for t in trials), default=0),
            "best_val_accuracy": max((t.value for t in trials if t.value is not None), default=None)}


PRUNERS = {"median": {"type": "median", "n_startup_trials": 3, "n_warmup_steps": 1},
           "hyperband": {"type": "hyperband", "min_resource": 1, "reduction_factor": 3}, "none": {"type": "none"}}


def variant(study_file: str, pruner: str | None, trials: int | None, epochs: int | None) -> str:
    """A copy of the study file with another pruner, trial budget or epochs per trial, everything else equal."""
    spec = yaml.safe_load(Path(study_file).read_text())
    if pruner:
        spec["pruner"] = PRUNERS[pruner]
    if trials:
        spec["n_trials"] = trials
    if epochs:
        spec["train"]["epochs"] = epochs
    out = Path(tempfile.mkdtemp()) / Path(study_file).name
    out.write_text(yaml.safe_dump(spec, sort_keys=False))
    return str(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study-file", default=str(ROOT / "studies" / "quick.yaml"))
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "fer2013.npz.xz"))
    parser.add_argument("--device", default="cpu", help="cpu or a GPU index")
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--pruner", choices=sorted(PRUNERS), help="replace the study file's pruner (median: 3 startup trials, 1 warm-up epoch)")
    parser.add_argument("--trials", type=int, help="replace the study file's trial budget (n_trials)")
    parser.add_argument("--epochs", type=int, help="replace the study file's epochs per trial")
    parser.add_argument("--out", default="benchmark-study.json")
    args = parser.parse_args()
    name = Path(args.study_file).name
    if args.pruner or args.trials or args.epochs:
        args.study_file = variant(args.study_file, args.pruner, args.trials, args.epochs)

    rows = []
    for n in args.workers:
        row = run(args.study_file, args.data, args.device, n)
        row["speedup"] = round(rows[0]["wall_s"] / row["wall_s"], 2) if rows else 1.0
        rows.append(row)
        print(f"{n} worker(s): {row['wall_s']} s, {row['complete']} complete + {row['pruned']} pruned "
              f"({row['failed']} failed), {row['epochs_run']} epochs, best val {row['best_val_accuracy']:.4f}, "
              f"{row['trials_per_hour']} trials/h, speed-up {row['speedup']}x, "
              f"peak RSS {row['host_peak_mb']} MB, GPU {row['gpu_peak_mb']} MB", flush=True)
        best = max(rows, key=lambda r: r["trials_per_hour"])
        result = {"study_file": name, "pruner": args.pruner or "the study file's", "trials": args.trials or "the study file's",
                  "epochs": args.epochs or "the study file's",
                  "device": args.device, "rows": rows, "saturating_workers": best["workers"]}
        Path(args.out).write_text(json.dumps(result, indent=2))  # after each count: a cut-off run keeps what it measured
    print(f"fastest: {best['workers']} worker(s) per device; wrote {args.out}")


if __name__ == "__main__":
    main()
