"""What distillation from the bundled model costs and buys: the teacher's pass (one view or the image and its
mirror, batch sizes) and cnn3 at the CPU main job's final-fit settings with and without the teacher.

    python benchmarks/distill.py --data fer2013.npz.xz --teacher-pass         # time per view count and batch
    python benchmarks/distill.py --data fer2013.npz.xz --epochs 3 --seeds 0   # without, then with the teacher
    python benchmarks/distill.py --data fer2013.npz.xz --epochs 1 --teachers none   # one epoch's time
    python benchmarks/distill.py --data fer2013.npz.xz --train-subset 6000 --epochs 6 --seeds 0 1 2

The final-fit settings are studies/quick.yaml's train and final sections with the main job's winning
trial (docs/benchmarks.md); --epochs shortens the fit (the cosine schedule decays over those epochs), and
--train-subset keeps a stratified part of Training (seed 0) as if it were all of it, teacher pass included.
The run with the teacher computes its answers for all (kept) Training images first, or reads them from
the cache, through distill.load_teacher, as `fer-opt train --set teacher=fer2013` does.
Every figure names the CPU capability it ran on.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from fer_optuna.search.study import load_spec  # noqa: E402
from fer_optuna.training import checkpoints, data, distill, trainer  # noqa: E402

# The main job's winner on 2 AVX2 cores (trial 8 of quick.yaml, docs/benchmarks.md).
WINNER = {"batch_size": 64, "lr": 6.9e-4, "dropout": 0.06, "hidden_dim": 128, "weight_decay": 1.7e-6}


def teacher_pass(loaded: data.FerData, device: torch.device, sample: int, batches: list[int]) -> list[dict]:
    """Seconds per 1,000 images for each view count and batch, and the teacher's PublicTest accuracy per view count."""
    ckpt = checkpoints.read_checkpoint(distill.teacher_path("fer2013"))
    train_images = loaded.split("train")[0][:sample]
    val_images, val_labels = loaded.split("val")
    rows = []
    for views in (1, 2):
        for batch in batches:
            start = time.perf_counter()
            distill.answers(ckpt, train_images, device, False, views, batch)
            per_1000 = (time.perf_counter() - start) / len(train_images) * 1000
            rows.append({"views": views, "batch": batch, "s_per_1000": round(per_1000, 2),
                         "s_all_training": round(per_1000 * len(loaded.split("train")[1]) / 1000)})
            print(rows[-1], flush=True)
    image = distill.answers(ckpt, val_images, device, False, 1, batches[-1])
    mirror = distill.answers(ckpt, val_images[:, :, ::-1], device, False, 1, batches[-1])
    for views, logits in ((1, image), (2, (image + mirror) / 2)):
        rows.append({"views": views, "teacher_publictest_acc": round(float((logits.argmax(1) == val_labels).mean()), 4)})
        print(rows[-1], flush=True)
    return rows


def fits(loaded: data.FerData, device: torch.device, epochs: int, seeds: list[int], teachers: list[str]) -> list[dict]:
    spec = load_spec(ROOT / "studies" / "quick.yaml")
    base = spec.train.replace(**{**dict(spec.final), **WINNER, "epochs": epochs})
    rows = []
    for seed in seeds:
        for teacher in teachers:
            cfg = base.replace(seed=seed, teacher="" if teacher == "none" else teacher)
            start = time.perf_counter()
            result = trainer.train(cfg, loaded, device=device, progress=False)
            rows.append({"seed": seed, "teacher": teacher, "epochs": epochs,
                         "publictest_acc": round(result.best_val_acc, 4), "best_epoch": result.best_epoch,
                         "s_per_epoch": round(result.seconds / result.epochs_run, 1),
                         "s_with_teacher_pass": round(time.perf_counter() - start)})
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--teacher-pass", action="store_true", help="time the teacher's pass instead of training")
    parser.add_argument("--sample", type=int, default=512, help="Training images per timed teacher pass")
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--teachers", nargs="+", default=["none", "fer2013"], help="none: without a teacher")
    parser.add_argument("--views", type=int, choices=[1, 2], default=distill.VIEWS,
                        help="the teacher's views: 1 = the image (what training uses), 2 = averaged with its mirror")
    parser.add_argument("--train-subset", type=int, default=0, help="keep this many Training images; 0 = all")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    device = torch.device("cpu")
    distill.VIEWS = args.views  # read by load_teacher, and part of its cache key
    loaded = data.load(args.data)
    if args.train_subset:
        images, labels = loaded.split("train")
        keep = data.stratified_indices(labels, args.train_subset / len(labels), 0)
        loaded = dataclasses.replace(loaded, images={**loaded.images, "train": images[keep]},
                                     labels={**loaded.labels, "train": labels[keep]})
    rows = (teacher_pass(loaded, device, args.sample, args.batches) if args.teacher_pass
            else fits(loaded, device, args.epochs, args.seeds, args.teachers))
    report = {"train_images": len(loaded.split("train")[1]), "teacher_views": args.views, "cpu": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
              "precision": "bf16" if trainer.use_bf16("auto", device) else "fp32", "rows": rows}
    print(json.dumps(report, indent=1))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
