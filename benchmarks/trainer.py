"""Training throughput: fer-optuna's trainer against the original-style pipeline, in one run.

fer-optuna: uint8 data resident on the device, batched augmentation on the
device, bf16 autocast where supported, channels_last, foreach/fused optimizer.
Original-style: a torch Dataset with per-sample PIL transforms (flip, rotation
+-10 degrees, ToTensor, Normalize) behind a DataLoader with worker processes,
fp32, stock nn.Dropout, on the same architecture.

    python benchmarks/trainer.py --device cpu --out cpu.json
    python benchmarks/trainer.py --device cpu --precision fp32   # the fp32 path on any CPU
    python benchmarks/trainer.py --device cuda --out gpu.json

The CPU figures depend on the CPU's capability (torch.backends.cpu.get_cpu_capability()):
bf16 autocast is fast only where the CPU has avx512_bf16/AMX; the JSON records which.

Prints a table and writes JSON with, per (model, batch): images_per_s,
baseline_images_per_s, ratio and seconds_per_epoch (28,709 Training images).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fer_optuna import augment, data, trainer  # noqa: E402
from fer_optuna.config import TrainConfig  # noqa: E402
from fer_optuna.models import build_model  # noqa: E402

TRAIN_IMAGES = 28709


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_s(run_epoch, n: int, device: torch.device) -> float:
    """Time the second of two epochs, so that warm-up (allocations, worker start) is not counted."""
    run_epoch()
    sync(device)
    t0 = time.perf_counter()
    run_epoch()
    sync(device)
    return n / (time.perf_counter() - t0)


def ours(cfg: TrainConfig, images: np.ndarray, labels: np.ndarray, device: torch.device, steps: int,
         compile_mode: str = "none") -> float:
    """Images/s of trainer.train_epoch over `steps` batches, after one warm-up epoch (which also compiles)."""
    n = steps * cfg.batch_size
    split = trainer.to_device(images[:n], labels[:n], device)
    model = build_model(cfg.model, cfg.dropout, cfg.hidden_dim, cfg.width).to(device, memory_format=torch.channels_last)
    if compile_mode != "none":
        model = torch.compile(model, mode=compile_mode)
    opt = trainer.make_optimizer(cfg, model, device)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator(device).manual_seed(0)
    rng = np.random.default_rng(0)
    bf16 = trainer.use_bf16(cfg.precision, device)
    return images_per_s(lambda: trainer.train_epoch(model, opt, None, loss_fn, split, cfg, gen, rng, bf16), n, device)


class PilDataset(torch.utils.data.Dataset):
    """The original experiments' input pipeline: one PIL image at a time."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        from torchvision import transforms

        self.images, self.labels = images, labels
        self.transform = transforms.Compose([
            transforms.RandomHorizontalFlip(), transforms.RandomRotation(10), transforms.ToTensor(),
            transforms.Normalize((augment.MEAN,), (augment.STD,)),
        ])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def baseline(cfg: TrainConfig, images: np.ndarray, labels: np.ndarray, device: torch.device, steps: int, workers: int) -> float:
    n = steps * cfg.batch_size
    loader = torch.utils.data.DataLoader(PilDataset(images[:n], labels[:n]), batch_size=cfg.batch_size, shuffle=True,
                                         num_workers=workers, drop_last=True, persistent_workers=workers > 0,
                                         pin_memory=device.type == "cuda")
    model = build_model(cfg.model, cfg.dropout, cfg.hidden_dim, cfg.width)
    for name, module in list(model.named_modules()):  # the stock dropout of the original code
        if type(module).__name__ == "Dropout":
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, name.rsplit(".", 1)[-1], nn.Dropout(module.p))
    model = model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = nn.CrossEntropyLoss()

    def epoch() -> None:
        model.train()
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

    return images_per_s(epoch, n, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "fer2013.npz.xz"))
    parser.add_argument("--models", nargs="+", default=["cnn3", "resnet18"])
    parser.add_argument("--batches", nargs="+", type=int, default=[64, 128, 256])
    parser.add_argument("--steps", type=int, help="batches timed per measurement [default: 30 on CPU, a full epoch on CUDA]")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"], help="fer-optuna's precision")
    parser.add_argument("--compile", default="none", choices=["none", "default", "reduce-overhead", "max-autotune-no-cudagraphs"],
                        help="also time fer-optuna with torch.compile in this mode (reduce-overhead adds CUDA graphs)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="DataLoader workers of the baseline")
    parser.add_argument("--out", default="benchmark-trainer.json")
    args = parser.parse_args()

    device = trainer.resolve_device(args.device)
    images, labels = data.load(args.data).split("train")
    rows = []
    for model in args.models:
        for batch in args.batches:
            steps = args.steps or (TRAIN_IMAGES // batch if device.type == "cuda" else max(4, 1920 // batch))
            if model != "cnn3" and device.type == "cpu":
                steps = max(2, steps // 4)  # the big families are slow on 2 cores
            cfg = TrainConfig(model=model, batch_size=batch, precision=args.precision)
            fast = ours(cfg, images, labels, device, steps)
            slow = baseline(cfg, images, labels, device, steps, args.workers)
            row = {"model": model, "batch_size": batch, "images_per_s": round(fast, 1),
                   "baseline_images_per_s": round(slow, 1), "ratio": round(fast / slow, 2),
                   "seconds_per_epoch": round(TRAIN_IMAGES / fast, 2),
                   "baseline_seconds_per_epoch": round(TRAIN_IMAGES / slow, 2), "timed_images": steps * batch}
            compiled = ""
            if args.compile != "none":
                row["compiled_images_per_s"] = round(ours(cfg, images, labels, device, steps, args.compile), 1)
                row["compile_gain"] = round(row["compiled_images_per_s"] / fast, 2)
                compiled = f"  torch.compile({args.compile}) {row['compiled_images_per_s']:.0f} img/s ({row['compile_gain']:.2f}x)"
            rows.append(row)
            print(f"{model:<9} batch {batch:>4}: {fast:>9.0f} img/s ({row['seconds_per_epoch']:.2f} s/epoch)  "
                  f"original-style {slow:>8.0f} img/s  ratio {row['ratio']:.2f}x{compiled}", flush=True)
    # The headline: cnn3 at the original's batch 64 on CPU, at 128 on a GPU (the targets).
    headline = 128 if device.type == "cuda" else 64
    head = next((r for r in rows if r["model"] == "cnn3" and r["batch_size"] == headline), rows[0])
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
        "bf16": trainer.use_bf16(args.precision, device), "torch": torch.__version__, "compile": args.compile,
        "images_per_s": head["images_per_s"], "baseline_images_per_s": head["baseline_images_per_s"],
        "ratio": head["ratio"], "rows": rows,
    }
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
