"""The FER+ figures of docs/model.md: how often each bundled model's answer is FER+'s majority label on
PublicTest (the val split), plain and with TTA. The FER2013 model's seven classes are matched to FER+'s by
name (happy is happiness, ...); it has no contempt, so it is wrong on every contempt face.

    python benchmarks/ferplus.py                     # both bundled models, plain and TTA
    python benchmarks/ferplus.py --models fer2013 --no-tta

Every figure names the CPU capability it ran on.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from fer_optuna.training import checkpoints, data, inference  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"


def agreement(name: str, images: np.ndarray, labels: np.ndarray, classes: tuple[str, ...], tta: bool) -> float:
    ckpt = checkpoints.read_checkpoint(checkpoints.model_file(name, "--models"))
    model, cfg = checkpoints.model_from_checkpoint(ckpt, torch.device("cpu"))
    mine = [checkpoints.SAME_CLASS.get(c.lower(), c.lower()) for c in checkpoints.checkpoint_classes(ckpt)]
    # Each of the model's outputs as the index of the data's class of that name (-1: none has it).
    theirs = [checkpoints.SAME_CLASS.get(c.lower(), c.lower()) for c in classes]
    to_data = np.array([theirs.index(c) if c in theirs else -1 for c in mine])
    x = inference.pixels(images, torch.device("cpu"), cfg.pixels)
    probs = inference.predict_proba(model, x, False, tta, cfg.crop, batch_size=256)
    return float((to_data[probs.argmax(1).numpy()] == labels).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=["fer2013", "ferplus"], help="bundled names or checkpoints")
    parser.add_argument("--no-tta", action="store_true", help="plain accuracy only (10-crop TTA is 10x the work)")
    parser.add_argument("--data", default=str(SHARED / "fer2013.npz.xz"))
    parser.add_argument("--labels", default=str(SHARED / "fer2013new.csv"))
    args = parser.parse_args()
    loaded = data.for_target(data.load(args.data, labels=args.labels), "majority")
    images, labels = loaded.split("val")
    for name in args.models:
        row = {"model": name, "n": len(labels), "cpu": torch.backends.cpu.get_cpu_capability(), "precision": "fp32"}
        for tta in (False,) if args.no_tta else (False, True):
            row["tta" if tta else "plain"] = round(agreement(name, images, labels, loaded.classes, tta), 4)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
