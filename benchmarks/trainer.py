"""Training throughput: fer-optuna's trainer against the original-style pipeline, in one run.

fer-optuna: uint8 data resident on the device, batched augmentation on the
device, bf16 autocast where supported, channels_last, foreach/fused optimizer,
max-pool before ReLU, dropout masks from random bytes on CPU.
Original-style: a torch Dataset with per-sample PIL transforms (flip, rotation
+-10 degrees, ToTensor, Normalize) behind a DataLoader with worker processes,
fp32, stock nn.Dropout, ReLU before max-pool, on the same architecture.
The two take turns over a few timed epochs and each keeps its best (--rounds),
so that a busy spell of a shared machine does not decide the ratio.

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
from fer_optuna.training import augment, data, inference, trainer  # noqa: E402
from fer_optuna.training.config import TrainConfig  # noqa: E402
from fer_optuna.training.models import build_model  # noqa: E402

TRAIN_IMAGES = 28709


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_images_per_s(epochs: list, n: int, device: torch.device, rounds: int) -> list[float]:
    """Each epoch function's best images/s over `rounds` timed epochs, taken in turn.

    A warm-up epoch each first (allocations, worker start, compiling). Turns alternate so
    that a slow spell of a shared machine hits every contender, and the best of the
    rounds is each one's speed when nothing else runs (as timeit takes the minimum).
    """
    best = [0.0] * len(epochs)
    for epoch in epochs:
        epoch()
    for _ in range(rounds):
        for i, epoch in enumerate(epochs):
            sync(device)
            t0 = time.perf_counter()
            epoch()
            sync(device)
            best[i] = max(best[i], n / (time.perf_counter() - t0))
    return best


def ours(cfg: TrainConfig, images: np.ndarray, labels: np.ndarray, device: torch.device, n: int,
         compile_mode: str = "none"):
    """An epoch of trainer.train_epoch over the first n images."""
    split = inference.to_device(images[:n], labels[:n], device)
    model = build_model(cfg.model, cfg.dropout, cfg.hidden_dim, cfg.width).to(device, memory_format=torch.channels_last)
    if compile_mode != "none":
        model = torch.compile(model, mode=compile_mode)
    run = trainer.Run(model, trainer.make_optimizer(cfg, model, device), None, False, None,
                      torch.Generator(device).manual_seed(0), np.random.default_rng(0), nn.CrossEntropyLoss(),
                      trainer.use_bf16(cfg.precision, device))
    return lambda: trainer.train_epoch(run, split, cfg)


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


def original_style(module: nn.Module) -> nn.Module:
    """The original code's layers: stock nn.Dropout, and ReLU before max-pool (same function)."""
    for name, child in module.named_children():
        setattr(module, name, nn.Dropout(child.p) if isinstance(child, nn.Dropout) else original_style(child))
    if isinstance(module, nn.Sequential):
        keys = list(module._modules)
        for a, b in zip(keys, keys[1:]):
            if isinstance(module[int(a)], nn.MaxPool2d) and isinstance(module[int(b)], nn.ReLU):
                module._modules[a], module._modules[b] = module._modules[b], module._modules[a]
    return module


def baseline(cfg: TrainConfig, images: np.ndarray, labels: np.ndarray, device: torch.device, n: int, workers: int):
    """An epoch of the original-style pipeline over the first n images."""
    loader = torch.utils.data.DataLoader(PilDataset(images[:n], labels[:n]), batch_size=cfg.batch_size, shuffle=True,
                                         num_workers=workers, drop_last=True, persistent_workers=workers > 0,
                                         pin_memory=device.type == "cuda")
    model = original_style(build_model(cfg.model, cfg.dropout, cfg.hidden_dim, cfg.width)).to(device)
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

    return epoch


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
    parser.add_argument("--rounds", type=int, help="timed epochs per contender, alternating; the best counts "
                        "[default: 3 on CPU, 1 on CUDA]")
    parser.add_argument("--out", default="benchmark-trainer.json")
    args = parser.parse_args()

    device = trainer.resolve_device(args.device)
    images, labels = data.load(args.data).split("train")
    rounds = args.rounds or (1 if device.type == "cuda" else 3)
    rows = []
    for model in args.models:
        for batch in args.batches:
            steps = args.steps or (TRAIN_IMAGES // batch if device.type == "cuda" else max(4, 1920 // batch))
            if model != "cnn3" and device.type == "cpu":
                steps = max(2, steps // 4)  # the big families are slow on 2 cores
            cfg = TrainConfig(model=model, batch_size=batch, precision=args.precision)
            n = steps * batch
            epochs = [ours(cfg, images, labels, device, n), baseline(cfg, images, labels, device, n, args.workers)]
            if args.compile != "none":
                epochs.append(ours(cfg, images, labels, device, n, args.compile))
            fast, slow, *compiled_speed = best_images_per_s(epochs, n, device, rounds)
            row = {"model": model, "batch_size": batch, "images_per_s": round(fast, 1),
                   "baseline_images_per_s": round(slow, 1), "ratio": round(fast / slow, 2),
                   "seconds_per_epoch": round(TRAIN_IMAGES / fast, 2),
                   "baseline_seconds_per_epoch": round(TRAIN_IMAGES / slow, 2), "timed_images": n}
            compiled = ""
            if args.compile != "none":
                row["compiled_images_per_s"] = round(compiled_speed[0], 1)
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
        "rounds": rounds,
        "images_per_s": head["images_per_s"], "baseline_images_per_s": head["baseline_images_per_s"],
        "ratio": head["ratio"], "rows": rows,
    }
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
