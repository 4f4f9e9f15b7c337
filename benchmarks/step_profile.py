"""Where a training step's time goes: wall time per step against the device's busy time, kernel
launches per step, and the ops that cost the most host time (torch.profiler, one run).

    python benchmarks/step_profile.py --device cuda --model cnn3 --batch-size 128 --out profile.json

A step whose wall time is far above its GPU time is bound by launching kernels, not by running
them: a bigger batch costs nothing more per step there, and CUDA graphs are the remedy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fer_optuna.training import inference, trainer  # noqa: E402
from fer_optuna.training.config import TrainConfig  # noqa: E402
from fer_optuna.training.models import build_model  # noqa: E402

LAUNCHES = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default="cnn3")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="steps profiled, after as many warm-up steps")
    parser.add_argument("--out", default="benchmark-step-profile.json")
    args = parser.parse_args()

    device = trainer.resolve_device(args.device)
    cfg = TrainConfig(model=args.model, batch_size=args.batch_size)
    rng = np.random.default_rng(0)
    n = args.steps * args.batch_size  # synthetic faces: the step's cost does not depend on the pixels
    split = inference.to_device(rng.integers(0, 256, (n, 48, 48), dtype=np.uint8), rng.integers(0, 7, n), device)
    model = build_model(cfg.model, cfg.dropout, cfg.hidden_dim, cfg.width).to(device, memory_format=torch.channels_last)
    bf16 = trainer.use_bf16(cfg.precision, device)
    run = trainer.Run(model, trainer.make_optimizer(cfg, model, device), None, False, None,
                      torch.Generator(device).manual_seed(0), rng, nn.CrossEntropyLoss(), bf16)
    epoch = lambda: trainer.train_epoch(run, split, cfg)  # noqa: E731
    epoch()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        epoch()  # ends in .item(): the device has finished when the clock stops
        wall = time.perf_counter() - t0
    events = prof.key_averages()
    # Only the kernels' own events: the ops that launched them report the same time again.
    device_us = sum(e.self_device_time_total for e in events
                    if e.device_type == DeviceType.CUDA and not e.is_user_annotation)
    launches = sum(e.count for e in events if e.key in LAUNCHES)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "model": args.model, "batch_size": args.batch_size, "steps": args.steps, "bf16": bf16,
        "wall_ms_per_step": round(wall * 1e3 / args.steps, 3),
        "device_busy_ms_per_step": round(device_us / 1e3 / args.steps, 3),
        "kernel_launches_per_step": round(launches / args.steps, 1),
        "note": "wall time includes the profiler's own overhead",
    }
    print(events.table(sort_by="self_cpu_time_total", row_limit=15))
    print(json.dumps(result, indent=2))
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
