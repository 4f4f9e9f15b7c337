"""Storage overhead: how many trials per second the study storage sustains with N worker processes.

Each worker runs the storage traffic of a real fer-optuna trial with no training
in it (a tiny trial: the study's suggest calls, the worker/device attributes,
3 epochs of report + should_prune + epoch attributes, the final tell), under
study.optimize with heartbeats on, exactly as `fer-opt worker` does. This is the
ceiling a storage puts on a study, the number to know before pointing 100 GPUs at it.

    python benchmarks/storage.py --workers 8 --seconds 20 --out storage.json
        # SQLite file, and a throwaway PostgreSQL server started from the machine's binaries
    python benchmarks/storage.py --storage postgresql+psycopg://u:p@host/db   # an existing server
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

EPOCHS = 3


def _worker(url: str, seconds: float, barrier) -> None:
    import optuna

    from fer_optuna.search import storage as fer_storage
    from fer_optuna.search import study as fer_study

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = fer_storage.open_storage(url, heartbeat=True)
    study, spec = fer_study.load_study("bench", storage)

    def objective(trial: optuna.Trial) -> float:
        params = fer_study.suggest(trial, spec.space)
        trial.set_user_attr("worker", "bench")
        trial.set_user_attr("device", "cpu")
        for epoch in range(1, EPOCHS + 1):
            trial.report(params["dropout"] * epoch, epoch)
            trial.set_user_attr("epochs_run", epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return params["dropout"]

    barrier.wait()
    study.optimize(objective, timeout=seconds)


def measure(url: str, workers: int, seconds: float) -> dict:
    import optuna

    from fer_optuna.search import storage as fer_storage
    from fer_optuna.search import study as fer_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # A random sampler: TPE's own cost grows with the history and would hide the storage's.
    spec_text = (ROOT / "studies" / "quick.yaml").read_text().replace("name: quick", "name: bench")
    spec_text = spec_text.replace("sampler: {type: tpe, seed: 0, n_startup_trials: 4}", "sampler: {type: random}")
    spec_file = Path(tempfile.mkdtemp()) / "bench.yaml"
    spec_file.write_text(spec_text.split("enqueue:")[0])
    fer_study.create(spec_file, url, data=str(spec_file), replace=True)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(workers + 1)
    procs = [ctx.Process(target=_worker, args=(url, seconds, barrier)) for _ in range(workers)]
    for p in procs:
        p.start()
    barrier.wait()
    t0 = time.perf_counter()
    for p in procs:
        p.join()
    wall = time.perf_counter() - t0
    trials = optuna.load_study(study_name="bench", storage=url).get_trials(deepcopy=False)
    finished = sum(t.state.is_finished() for t in trials)
    return {"storage": fer_storage.mask_url(url).split(":")[0], "workers": workers, "seconds": round(wall, 2),
            "trials": finished, "trials_per_s": round(finished / wall, 2),
            "failed": sum(t.state.name == "FAIL" for t in trials), "exit_codes": [p.exitcode for p in procs]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--storage", action="append", help="storage URL(s) [default: a SQLite file and a throwaway PostgreSQL]")
    parser.add_argument("--out", default="benchmark-storage.json")
    args = parser.parse_args()

    server = None
    urls = args.storage
    if not urls:
        from pgserver import PostgresServer, find_bin

        urls = [f"sqlite:///{tempfile.mkdtemp()}/bench.db"]
        if find_bin():
            server = PostgresServer(find_bin()).start()
            urls.append(server.new_database())
        else:
            print("PostgreSQL binaries not found: measuring SQLite only")
    try:
        rows = []
        for url in urls:
            row = measure(url, args.workers, args.seconds)
            rows.append(row)
            print(f"{row['storage']:<22} {row['workers']} workers: {row['trials']} trials in {row['seconds']} s = "
                  f"{row['trials_per_s']} trials/s ({row['failed']} failed)", flush=True)
    finally:
        if server is not None:
            server.stop()
    if len(rows) == 2:
        print(f"ratio (second / first): {rows[1]['trials_per_s'] / rows[0]['trials_per_s']:.2f}")
    Path(args.out).write_text(json.dumps({"rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
