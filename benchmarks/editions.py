"""Accuracy on both editions of PublicTest (original pixels, and the contrast-processed copy), plain and
with TTA, for saved models or for the original's default cnn3 config trained with equalisation on and off.

    python benchmarks/editions.py --models fer_optuna/weights/fer2013-best.pt runs/old.pt
    python benchmarks/editions.py --models runs/stage2.pt --smooth 0 0.5   # each model under each low-pass
    python benchmarks/editions.py --models runs/stage2.pt --smooth 0 0.3 0.5 --no-tta   # plain only: minutes, not an hour
    python benchmarks/editions.py --train-cnn3 --epochs 25        # trains twice: equalize true, false
    python benchmarks/editions.py --models fer_optuna/weights/fer2013-best.pt --precision fp32 bf16 --no-tta   # accuracy and time of each

Every figure comes from one run and names the CPU capability it ran on.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from fer_optuna.training import checkpoints, data, inference, trainer  # noqa: E402
from fer_optuna.training.config import TrainConfig  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"


def scores(model_file: Path, editions: dict, device: torch.device, smooth: float | None, ttas: tuple,
           precision: str) -> dict:
    model, cfg = checkpoints.model_from_checkpoint(checkpoints.read_checkpoint(model_file), device)
    if smooth is not None:
        cfg = cfg.replace(smooth=smooth)
    bf16 = inference.inference_bf16(precision)
    row = {"model": str(model_file), "equalize": cfg.equalize, "smooth": cfg.smooth, "precision": precision}
    for name, (images, labels) in editions.items():
        split = inference.to_device(images, labels, device, pipeline=cfg.pixels)
        for tta in ttas:
            start = time.perf_counter()
            row[f"{name}{' TTA' if tta else ''}"] = round(inference.evaluate(model, split, bf16, tta, cfg.crop)[1], 4)
            row[f"{name}{' TTA' if tta else ''} seconds"] = round(time.perf_counter() - start, 1)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=[], type=Path, help="checkpoints to evaluate")
    parser.add_argument("--smooth", nargs="*", type=float, default=[None],
                        help="evaluate each model under each of these low-pass sigmas instead of its own")
    parser.add_argument("--precision", nargs="*", default=["fp32"], choices=inference.INFERENCE_PRECISIONS,
                        help="evaluate each model in each of these precisions")
    parser.add_argument("--no-tta", action="store_true", help="plain accuracy only (10-crop TTA is 10x the work)")
    parser.add_argument("--train-cnn3", action="store_true", help="train the default cnn3 config with equalize on and off")
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--data", default=str(SHARED / "fer2013.npz.xz"))
    parser.add_argument("--processed", default=str(SHARED / "fer2013-processed-publictest.npz.xz"))
    parser.add_argument("--out", default="benchmark-editions.json")
    args = parser.parse_args()

    device = trainer.resolve_device("auto")
    original = data.load(args.data)
    editions = {"original": original.split("val"), "processed": data.load(args.processed).split("val")}
    models = list(args.models)
    trained = {}
    for equalize in ((True, False) if args.train_cnn3 else ()):
        path = Path(f"runs/cnn3-default-equalize-{str(equalize).lower()}.pt")
        result = trainer.train(TrainConfig(epochs=args.epochs, equalize=equalize), original, device=device,
                               checkpoint=path, progress=False, log=None)
        trained[str(path)] = {"epochs": args.epochs, "seconds_per_epoch": round(result.seconds / result.epochs_run, 1)}
        models.append(path)
    ttas = (False,) if args.no_tta else (False, True)
    rows = [scores(m, editions, device, s, ttas, p) | trained.get(str(m), {})
            for m in models for s in args.smooth for p in args.precision]
    head = [f"{name}{' TTA' if tta else ''}" for name in editions for tta in ttas]
    for row in rows:
        print(f"{row['model']:<45} equalize {str(row['equalize']):<5} smooth {row['smooth']} {row['precision']}  "
              + "  ".join(f"{h} {row[h]:.4f} ({row[h + ' seconds']} s)" for h in head))
    meta = {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "device": str(device),
            "date": time.strftime("%Y-%m-%d")}
    Path(args.out).write_text(json.dumps({**meta, "rows": rows}, indent=2))
    print(f"wrote {args.out} ({meta['cpu_capability']})")


if __name__ == "__main__":
    main()
