"""What a latency constraint, or pruning a two-objective study, costs and buys.

--compare constraints (the default): runs the study file as it is and again without its
`constraints:`, then prints each study's best trial with its val accuracy and costs, how many
trials broke the constraint and were not trained, each run's wall time, and the
accuracy/latency Pareto front of all trials trained.

--compare teacher: runs the study file as it is and again with the bundled model as every trial's
teacher (`train: {teacher: fer2013}`), then prints each study's best feasible trial as above.

--compare pruners: runs a two-objective study file as it is (its pruner) and again with
`pruner: none` (and, with --variants, the plain median rule among all trials whatever their
cost), from the same sampler seed, then prints each run's epochs trained, wall time, front, and
the front's hypervolume against a stated reference point.

--replay URL: replays each rule on the per-epoch accuracies of an unpruned run's study (its
storage URL), trial by trial in its order, with the study file's pruner options and n_warmup_steps
1 and 2: which trials each rule stops, the epochs saved, the front of what is left and its
hypervolume. The same trials for every rule, so the sampler's luck is out of the comparison.

Each variant gets its own SQLite file; the variants run at once, one worker with `--threads`
cores each.

    python benchmarks/deploy.py --data fer2013.npz.xz                      # studies/fer2013-deploy-cpu.yaml
    python benchmarks/deploy.py --data fer2013.npz.xz --out deploy.json
    python benchmarks/deploy.py --data fer2013.npz.xz --compare teacher     # the best under 1 ms, distilled or not
    python benchmarks/deploy.py --data fer2013.npz.xz --compare pruners --seed 1  # benchmarks/studies/deploy-front.yaml
    python benchmarks/deploy.py --data fer2013.npz.xz --compare pruners --variants median-all
    python benchmarks/deploy.py --replay sqlite:////tmp/fer-deploy-XXXX/none/study.db
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
    # As the main job's worker: seed offset 0, so that every variant draws from the study file's seed
    # (a worker started by `fer-opt worker` offsets it by its process id).
    [name] = optuna.get_all_study_names(url)
    run = (f"from fer_optuna.search.worker import WorkerOptions, run; "
           f"run(WorkerOptions(study={name!r}, storage={url!r}, device='cpu', threads={threads}, seed_offset=0))")
    worker = subprocess.Popen([sys.executable, "-c", run], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
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


# Where a front's hypervolume is measured from: an accuracy below the majority class's (24.9% of FER2013's
# val split), so that every trained trial counts, and a latency above deploy-front.yaml's slowest
# architecture (vgg width 0.375: 1.7 to 2.3 ms a face on an AVX2 core).
REFERENCE = {"val_accuracy": 0.2, "latency_ms": 3.0}
PRUNER_VARIANTS = {"pareto-median": None, "none": {"type": "none"}, "median-all": "all"}


def variants(spec: dict, compare: str, chosen: list[str]) -> dict[str, dict]:
    if compare == "constraints":
        assert spec.get("constraints"), "the study file has no constraints: to compare"
        return {"constrained": spec, "unconstrained": {**{k: v for k, v in spec.items() if k != "constraints"},
                                                       "name": spec["name"] + "-unconstrained"}}
    if compare == "teacher":
        taught = {**spec, "train": {**spec["train"], "teacher": "fer2013"}, "name": spec["name"] + "-teacher"}
        return {"no-teacher": spec, "teacher": taught}
    assert spec["pruner"]["type"] == "pareto-median", "the study file's pruner must be pareto-median"
    found = {}
    for name in chosen:
        change = PRUNER_VARIANTS[name]
        pruner = change if isinstance(change, dict) else {**spec["pruner"], **({"among": change} if change else {})}
        found[name] = {**spec, "pruner": pruner, "name": f"{spec['name']}-{name}"}
    return found


def hypervolume(points: list[tuple[float, float]]) -> float:
    """The area the front dominates up to REFERENCE, in accuracy x ms; what optuna.visualization.plot_hypervolume_history
    plots, from the same Optuna function."""
    import numpy as np
    from optuna._hypervolume import compute_hypervolume

    ref = np.array([-REFERENCE["val_accuracy"], REFERENCE["latency_ms"]])
    inside = [(-acc, ms) for acc, ms in points if -acc < ref[0] and ms < ref[1]]
    return float(compute_hypervolume(np.array(inside), ref)) if inside else 0.0


def front_summary(url: str, seconds: float) -> dict:
    [name] = optuna.get_all_study_names(url)
    study = optuna.load_study(study_name=name, storage=url)
    trials = study.get_trials(deepcopy=False)
    front = sorted(study.best_trials, key=lambda t: -t.values[0])
    row = lambda t: {"trial": t.number, "val_accuracy": round(t.values[0], 4), "latency_ms": t.values[1],  # noqa: E731
                     "architecture": t.user_attrs["architecture"]}
    return {"study": name, "seconds": round(seconds), "complete": sum(t.state == TrialState.COMPLETE for t in trials),
            "pruned": sum(t.state == TrialState.PRUNED for t in trials),
            "epochs": sum(t.user_attrs.get("epochs_run", 0) for t in trials),
            "front": [row(t) for t in front], "hypervolume": round(hypervolume([tuple(t.values) for t in front]), 5)}


def replay(url: str, spec: dict) -> None:
    """Each rule on the same finished trials: a trial it stops keeps its accuracies up to that epoch only."""
    from fer_optuna.search.pruners import ParetoMedianPruner

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    [name] = optuna.get_all_study_names(url)
    trials = optuna.load_study(study_name=name, storage=url).get_trials(states=(TrialState.COMPLETE,))
    epochs, options = spec["train"]["epochs"], {k: v for k, v in spec["pruner"].items() if k != "type"}
    print(f"replaying {len(trials)} trials of {name}; reference point {REFERENCE}")
    for among in ("cheaper", "all"):
        for warmup in (1, 2):
            rule = ParetoMedianPruner(("latency_ms",), epochs, **{**options, "n_warmup_steps": warmup, "among": among})
            study = optuna.create_study(directions=["maximize", "minimize"])
            stopped = {}
            for t in trials:
                curve = dict(sorted(t.intermediate_values.items()))
                for epoch in curve:
                    seen = {e: v for e, v in curve.items() if e <= epoch}
                    running = optuna.trial.create_trial(state=TrialState.COMPLETE, values=[0, 0], user_attrs=t.user_attrs,
                                                        intermediate_values=seen)
                    running.number = -1
                    if rule.prune(study, running):
                        stopped[t.number] = epoch
                        break
                kept = {e: v for e, v in curve.items() if e <= stopped.get(t.number, epochs)}
                study.add_trial(optuna.trial.create_trial(
                    state=TrialState.PRUNED if t.number in stopped else TrialState.COMPLETE,
                    values=None if t.number in stopped else t.values, intermediate_values=kept, user_attrs=t.user_attrs))
            front = study.best_trials
            hv = hypervolume([tuple(f.values) for f in front])
            saved = sum(epochs - e for e in stopped.values())
            print(f"  among {among:>7}, warm-up {warmup}: stopped {len(stopped)} (trial:epoch "
                  f"{', '.join(f'{n}:{e}' for n, e in stopped.items()) or '-'}), {saved} of {len(trials) * epochs} epochs "
                  f"saved; front {sorted(round(f.values[0], 3) for f in front)}, hypervolume {hv:.4f}")


def print_constraints(result: dict, kinds: list[str]) -> None:
    for kind in kinds:
        r = result[kind]
        b = r["best"]
        print(f"{kind:>13}: best trial {b['trial']} ({b['architecture']}) val {b['val_accuracy']:.4f}, "
              f"{b['latency_ms']:.2f} ms/face, {b['params'] / 1e6:.2f}M params; {r['complete']} complete, "
              f"{r['pruned']} pruned, {r['infeasible_not_trained']} infeasible not trained; {r['seconds']} s")
    print(f"accuracy/latency front of the {kinds[-1]} study's trained trials:")
    for t in result[kinds[-1]]["front"]:
        print(f"  trial {t['trial']:>2}  val {t['val_accuracy']:.4f}  {t['latency_ms']:.2f} ms  {t['architecture']}")


def print_pruners(result: dict, names: list[str]) -> None:
    print(f"hypervolume reference point: val_accuracy {REFERENCE['val_accuracy']}, latency_ms {REFERENCE['latency_ms']}")
    for name in names:
        r = result[name]
        print(f"{name:>13}: {r['complete']} complete, {r['pruned']} pruned, {r['epochs']} epochs trained, "
              f"{r['seconds']} s; front of {len(r['front'])}, hypervolume {r['hypervolume']:.4f}")
        for t in r["front"]:
            print(f"    trial {t['trial']:>2}  val {t['val_accuracy']:.4f}  {t['latency_ms']:.2f} ms  {t['architecture']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data")
    parser.add_argument("--replay", metavar="URL", help="an unpruned run's study storage: replay the rules on it")
    parser.add_argument("--compare", choices=("constraints", "teacher", "pruners"), default="constraints")
    parser.add_argument("--study-file", type=Path, help="default: studies/fer2013-deploy-cpu.yaml for constraints and teacher, "
                        "benchmarks/studies/deploy-front.yaml for pruners")
    parser.add_argument("--variants", default="pareto-median,none",
                        help=f"with --compare pruners, which of {', '.join(PRUNER_VARIANTS)} to run")
    parser.add_argument("--seed", type=int, help="the sampler's seed, instead of the study file's")
    parser.add_argument("--threads", type=int, default=1, help="cores for each worker")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    constrained = args.compare != "pruners"  # constraints and teacher: each run's best feasible trial
    default = "studies/fer2013-deploy-cpu.yaml" if constrained else "benchmarks/studies/deploy-front.yaml"
    study_file = args.study_file or ROOT / default
    spec = yaml.safe_load(study_file.read_text())
    if args.seed is not None:
        spec["sampler"] = {**spec["sampler"], "seed": args.seed}
    if args.replay:
        return replay(args.replay, spec)
    if not args.data:
        parser.error("--data is required")
    names = args.variants.split(",")
    root = Path(tempfile.mkdtemp(prefix="fer-deploy-"))
    runs = {}
    for kind, variant in variants(spec, args.compare, names).items():
        folder = root / kind
        folder.mkdir()
        (folder / "study.yaml").write_text(yaml.safe_dump(variant, sort_keys=False))
        runs[kind] = (*start(folder / "study.yaml", str(Path(args.data).resolve()), folder, args.threads), time.time())
    result = {"cpu": torch.backends.cpu.get_cpu_capability(), "study_file": str(study_file),
              "sampler": spec["sampler"], **({"constraints": spec["constraints"]} if constrained else {})}
    for kind, (worker, url, started) in runs.items():
        if worker.wait() != 0:
            sys.exit(f"the {kind} worker failed; see {root / kind / 'worker.log'}")
        result[kind] = (summary if constrained else front_summary)(url, time.time() - started)
    if constrained:
        print_constraints(result, list(runs))
    else:
        print_pruners(result, list(runs))
    print(f"CPU: {result['cpu']}; logs in {root}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
