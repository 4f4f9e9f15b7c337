"""What a model costs where it is deployed: parameters, multiply-accumulates, file size and CPU latency.

All of them follow from the architecture and the number of classes alone (a dense CNN does the
same arithmetic whatever its weights), so they are known before a model trains: a search can skip a configuration that
breaks a limit in seconds.

Latency is that of the exported ONNX graph (pixel pipeline and softmax included) under ONNX
Runtime on one thread, as a webcam loop on one core runs it. Two things keep other processes on
the host (say, workers training beside this one) out of the figure:
- the clock is the calling thread's CPU time, which stops while the scheduler runs someone
  else; with one intra-op thread ONNX Runtime computes on the calling thread;
- one measurement at a time per host (a lock file), so that two measurements never share a core.
What remains is what running beside others costs any deployed model: shared caches and memory.
"""

from __future__ import annotations

import fcntl
import io
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .config import TrainConfig
from .data import SIDE
from .models import build_model, count_parameters
from .portable import onnx_bytes

MEASURES = {
    "params": "parameters",
    "macs": "multiply-accumulates per face",
    "size_mb": "the weights as a checkpoint stores them (fp32), MB",
    "latency_ms": "ms per face, batch 1, ONNX Runtime on 1 CPU thread",
    "latency_b32_ms": "ms per batch of 32 faces, ONNX Runtime on 1 CPU thread",
}
LOCK = Path(tempfile.gettempdir()) / "fer-optuna-latency.lock"


def count_macs(model: nn.Module, side: int = SIDE) -> int:
    """Multiply-accumulates of one face through the model's convolutions and linear layers, counted
    from the shapes a forward pass produces (the rest, ReLU, pooling, norms, is a few percent)."""
    total = 0

    def conv(module: nn.Conv2d, inputs, output):
        nonlocal total
        per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        total += output[0].numel() * per_output

    def linear(module: nn.Linear, inputs, output):
        nonlocal total
        total += output[0].numel() * module.in_features

    hooks = [m.register_forward_hook(conv if isinstance(m, nn.Conv2d) else linear)
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 1, side, side))
    finally:
        for h in hooks:
            h.remove()
    return total


@contextmanager
def _one_at_a_time():
    with open(LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def latency_ms(graph: bytes, batch: int, min_runs: int = 30, min_seconds: float = 0.3) -> list[float]:
    """CPU milliseconds per run of the graph on `batch` faces: at least min_runs runs and min_seconds."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    session = onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    pixels = np.random.default_rng(0).integers(0, 256, (batch, 1, SIDE, SIDE)).astype(np.float32)
    runs: list[float] = []
    with _one_at_a_time():
        for _ in range(5):  # warm-up: allocations, caches
            session.run(None, {"pixels": pixels})
        while len(runs) < min_runs or sum(runs) < 1000 * min_seconds:
            start = time.thread_time_ns()
            session.run(None, {"pixels": pixels})
            runs.append((time.thread_time_ns() - start) / 1e6)
    return runs


def architecture(cfg: TrainConfig, n_classes: int) -> str:
    """What the exported graph depends on; configs that differ only in training have the same costs."""
    return (f"{cfg.model} width {cfg.width:g} hidden {cfg.hidden_dim} equalize {cfg.equalize} smooth {cfg.smooth:g} "
            f"classes {n_classes}")


def measure(cfg: TrainConfig, n_classes: int) -> dict[str, float]:
    """Every measure in MEASURES for the config's architecture with a head of n_classes, the model that trains
    on data with that many classes; latencies are medians."""
    model = build_model(cfg.model, cfg.dropout, cfg.hidden_dim, cfg.width, n_classes)
    weights = io.BytesIO()
    torch.save(model.state_dict(), weights)
    graph = onnx_bytes(model, cfg)  # the graph `fer-opt export --onnx` writes
    return {"params": count_parameters(model), "macs": count_macs(model),
            "size_mb": round(len(weights.getvalue()) / 1e6, 3),
            "latency_ms": round(statistics.median(latency_ms(graph, 1)), 4),
            "latency_b32_ms": round(statistics.median(latency_ms(graph, 32, min_runs=10)), 3)}
