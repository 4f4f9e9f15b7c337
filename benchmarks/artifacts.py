"""What a trial's uploads cost: seconds per epoch spent sending a cnn3 run's state and best checkpoint to
the artifact store, on a folder and on a real S3 server (SeaweedFS's `weed mini` on this machine),
against no store, beside the epoch they follow.

An epoch of a trial saves its run state (weights, Adam's moments, RNG streams) and, when it
improved, its best checkpoint; with a store both are then uploaded (the state every epoch,
the checkpoint when it changed). This times those uploads for the real files of a cnn3 run,
each the best of several rounds, and the Training epoch on this CPU for scale.

    python benchmarks/artifacts.py --out artifacts.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from fer_optuna.search import artifacts  # noqa: E402
from fer_optuna.training import data, trainer  # noqa: E402
from fer_optuna.training.config import TrainConfig  # noqa: E402


def upload_seconds(store: artifacts.ArtifactStore, files: list[Path], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for i, path in enumerate(files):
            store.put(f"bench-{i}", path)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "fer2013.npz.xz"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default="benchmark-artifacts.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    full = data.load(args.data)
    cfg = TrainConfig(epochs=1)  # the original's cnn3 config: the main job's kind of trial
    start = time.perf_counter()
    trainer.train(cfg, full, device=torch.device("cpu"), checkpoint=work / "trial.pt", state=work / "trial.state.pt",
                  progress=False, log=None)
    epoch = time.perf_counter() - start
    files = [work / "trial.state.pt", work / "trial.pt"]
    result = {"epoch_seconds": round(epoch, 1), "state_mb": round(files[0].stat().st_size / 2**20, 1),
              "checkpoint_mb": round(files[1].stat().st_size / 2**20, 1), "none": 0.0,
              "folder": round(upload_seconds(artifacts.ArtifactStore(str(work / "store")), files, args.rounds), 3)}
    from s3server import S3Server, find_weed

    server = S3Server(find_weed()).start()
    try:
        os.environ.update(server.env())
        bucket = server.new_bucket()
        result["s3"] = round(upload_seconds(artifacts.ArtifactStore(f"s3://{bucket}/bench"), files, args.rounds), 3)
    finally:
        server.remove()
    result["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    print(json.dumps(result, indent=2))
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
