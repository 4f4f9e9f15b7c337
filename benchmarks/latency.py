"""How steady the latency measure is: one model measured 10 times on a quiet host and beside busy workers.

Each round is what a worker records for a trial (`costs.measure`: the median of at least 30
runs of the exported graph on one ONNX Runtime thread, timed by the thread's CPU clock). The
busy rounds run beside N real training processes (`fer-opt train`, one thread each). For
contrast, the same rounds are also timed by the wall clock.

    python benchmarks/latency.py --data fer2013-sample.csv.xz                  # cnn3 and vgg at width 0.25
    python benchmarks/latency.py --data fer2013-sample.csv.xz --busy 0 2 --rounds 10
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from fer_optuna.training import costs  # noqa: E402
from fer_optuna.training.config import TrainConfig  # noqa: E402


def rounds(graph: bytes, n: int, clock) -> list[float]:
    real = time.thread_time_ns
    time.thread_time_ns = clock  # the measure's clock, swapped for the wall-clock contrast
    try:
        return [statistics.median(costs.latency_ms(graph, 1)) for _ in range(n)]
    finally:
        time.thread_time_ns = real


def busy_workers(n: int, data: str) -> list[subprocess.Popen]:
    out = Path(tempfile.mkdtemp())
    return [subprocess.Popen([sys.executable, "-m", "fer_optuna.cli", "train", "--data", data, "--device", "cpu",
                              "--epochs", "1000", "--out", str(out / f"busy-{i}.pt")], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env={**os.environ, "OMP_NUM_THREADS": "1"}) for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="data for the busy workers to train on")
    parser.add_argument("--busy", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    models = {"cnn3": TrainConfig(model="cnn3", hidden_dim=256), "vgg 0.25": TrainConfig(model="vgg", width=0.25)}
    graphs = {name: costs.onnx_bytes(costs.build_model(c.model, c.dropout, c.hidden_dim, c.width), c)
              for name, c in models.items()}
    print(f"CPU: {torch.backends.cpu.get_cpu_capability()}; ms per face, batch 1, {args.rounds} rounds: min / median / max")
    for n in args.busy:
        workers = busy_workers(n, args.data)
        time.sleep(15 if n else 0)  # past their data loading, into training
        try:
            for name, graph in graphs.items():
                for clock_name, clock in (("thread CPU", time.thread_time_ns), ("wall", time.perf_counter_ns)):
                    found = rounds(graph, args.rounds, clock)
                    print(f"  {n} busy workers  {name:>8}  {clock_name:>10}: {min(found):.3f} / "
                          f"{statistics.median(found):.3f} / {max(found):.3f}  (spread {max(found) / min(found) - 1:.1%})")
        finally:
            for w in workers:
                w.kill()


if __name__ == "__main__":
    main()
