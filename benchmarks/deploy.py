"""What a latency constraint costs and buys: a constrained study against the same study unconstrained.

Runs the study file as it is and again without its `constraints:` (each in its own SQLite
file, both at once, one worker with `--threads` cores each), then prints each study's best
trial with its val accuracy and costs, how many trials broke the constraint and were not
trained, each run's wall time, and the accuracy/latency Pareto front of all trials trained.

    python benchmarks/deploy.py --data fer2013.npz.xz                      # studies/fer2013-deploy-cpu.yaml
    python benchmarks/deploy.py --data fer2013.npz.xz --out deploy.json
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
import torch
import yaml
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[1]


def start(study_file: Path, data: str, folder: Path, threads: int) -> tuple[subprocess.Popen, str]:
    url = f"sqlite:///{folder}/study.db"
    fer_opt = [sys.executable, "-m", "fer_optuna.cli"]
    subprocess.run([*fer_opt, "create-study", "--config", str(study_file), "--storage", url, "--data", data],
                   check=True, cwd=ROOT, capture_output=True)
    log = open(folder / "worker.log", "w")
    worker = subprocess.Popen([*fer_opt, "worker", "--storage", url, "--gpu", "cpu", "--threads", str(threads)],
                              cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    return worker, url


def pareto(trials: list) -> list:
    """The trials no other beats on both val accuracy (up) and latency (down)."""
    def point(t):
        return t.value, -t.user_attrs["latency_ms"]

    return [t for t in trials if not any(point(o) != point(t) and all(a >= b for a, b in zip(point(o), point(t)))
                                         for o in trials)]


def summary(url: str, seconds: float) -> dict:
    [name] = optuna.get_all_study_names(url)
    study = optuna.load_study(study_name=name, storage=url)
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    feasible = [t for t in trials if all(v <= 0 for v in t.constraints.values())]
    best = max(feasible, key=lambda t: t.value)
    trained = [t for t in trials if "infeasible" not in t.user_attrs]
    row = lambda t: {"trial": t.number, "val_accuracy": round(t.value, 4), "architecture": t.user_attrs["architecture"],  # noqa: E731
                     "latency_ms": t.user_attrs["latency_ms"], "params": t.user_attrs["params"],
                     "macs": t.user_attrs["macs"]}
    return {"study": name, "seconds": round(seconds), "complete": len(trials),
            "pruned": len(study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))),
            "infeasible_not_trained": sum("infeasible" in t.user_attrs for t in trials),
            "best": row(best), "front": sorted((row(t) for t in pareto(trained)), key=lambda r: -r["val_accuracy"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--study-file", type=Path, default=ROOT / "studies" / "fer2013-deploy-cpu.yaml")
    parser.add_argument("--threads", type=int, default=1, help="cores for each of the two workers")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    spec = yaml.safe_load(args.study_file.read_text())
    assert spec.get("constraints"), f"{args.study_file} has no constraints: to compare"
    free = {**{k: v for k, v in spec.items() if k != "constraints"}, "name": spec["name"] + "-unconstrained"}
    root = Path(tempfile.mkdtemp(prefix="fer-deploy-"))
    runs = {}
    for kind, text in (("constrained", args.study_file.read_text()), ("unconstrained", yaml.safe_dump(free))):
        folder = root / kind
        folder.mkdir()
        (folder / "study.yaml").write_text(text)
        runs[kind] = (*start(folder / "study.yaml", str(Path(args.data).resolve()), folder, args.threads), time.time())
    result = {"cpu": torch.backends.cpu.get_cpu_capability(), "study_file": str(args.study_file),
              "constraints": spec["constraints"]}
    for kind, (worker, url, started) in runs.items():
        if worker.wait() != 0:
            sys.exit(f"the {kind} worker failed; see {root / kind / 'worker.log'}")
        result[kind] = summary(url, time.time() - started)
    for kind in ("constrained", "unconstrained"):
        r = result[kind]
        b = r["best"]
        print(f"{kind:>13}: best trial {b['trial']} ({b['architecture']}) val {b['val_accuracy']:.4f}, "
              f"{b['latency_ms']:.2f} ms/face, {b['params'] / 1e6:.2f}M params; {r['complete']} complete, "
              f"{r['pruned']} pruned, {r['infeasible_not_trained']} infeasible not trained; {r['seconds']} s")
    print("accuracy/latency front of the unconstrained study's trained trials:")
    for t in result["unconstrained"]["front"]:
        print(f"  trial {t['trial']:>2}  val {t['val_accuracy']:.4f}  {t['latency_ms']:.2f} ms  {t['architecture']}")
    print(f"CPU: {result['cpu']}; logs in {root}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
