"""Inference: the data on the device, and a model's class probabilities and accuracy on it.

Inference runs in fp32 unless bf16 is asked for: the same model file then gives the same
answers on every machine and through its ONNX graph. Training scores its val split here too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fer_optuna.errors import FerOptError
from . import augment, checkpoints, metrics
from .config import PixelPipeline
from .data import FerData, stratified_indices

INFERENCE_PRECISIONS = ("fp32", "bf16")


def inference_bf16(precision: str | None = None) -> bool:
    """Inference's precision: fp32 unless bf16 is asked for.

    Not `auto`: under bf16 autocast the same model file gives other probabilities (up to
    about 1e-2) and now and then another label, so a model's answers would depend on the
    CPU it runs on, and would differ from its ONNX graph's, which runs in fp32.
    """
    precision = precision or "fp32"
    if precision not in INFERENCE_PRECISIONS:
        raise FerOptError(f"precision {precision!r}: expected {' or '.join(INFERENCE_PRECISIONS)}", flag="--precision")
    return precision == "bf16"


@dataclass(frozen=True)
class DeviceSplit:
    images: torch.Tensor  # uint8 (N, 1, 48, 48)
    labels: torch.Tensor  # int64 (N,)
    degraded: torch.Tensor | None = None  # uint8 (N, 1, 48, 48): augment.degraded_copies of images
    teacher: torch.Tensor | None = None  # float32 (N, classes): a teacher's logits for the images (distill.py)
    soft: torch.Tensor | None = None  # float32 (N, classes): soft targets (FER+ vote distributions) for the loss

    def __len__(self) -> int:
        return len(self.labels)


def pixels(images: np.ndarray, device: torch.device, pipeline: PixelPipeline = PixelPipeline()) -> torch.Tensor:
    """uint8 (N, 48, 48) on the host -> uint8 (N, 1, 48, 48) on the device, through the model's pixel pipeline."""
    x = torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1).to(device)
    return augment.pixel_pipeline(x, pipeline).contiguous(memory_format=torch.channels_last)


def to_device(images: np.ndarray, labels: np.ndarray, device: torch.device, limit: int = 0, seed: int = 0,
              pipeline: PixelPipeline = PixelPipeline(), degraded: bool = False,
              teacher: np.ndarray | None = None, soft: np.ndarray | None = None) -> DeviceSplit:
    if limit and limit < len(labels):
        keep = stratified_indices(labels, limit / len(labels), seed)
        images, labels = images[keep], labels[keep]
        teacher, soft = (a[keep] if a is not None else None for a in (teacher, soft))
    copies = pixels(augment.degraded_copies(images, seed), device, pipeline) if degraded else None
    teacher, soft = (torch.from_numpy(a).to(device) if a is not None else None for a in (teacher, soft))
    return DeviceSplit(pixels(images, device, pipeline), torch.from_numpy(labels).to(device), copies, teacher, soft)


@torch.no_grad()
def predict_proba(model: nn.Module, images: torch.Tensor, bf16: bool, tta: bool = False, tta_crop: int = 48,
                  batch_size: int = 1024) -> torch.Tensor:
    """Class probabilities (N, classes) for uint8 images (N, 1, 48, 48); TTA views follow the training crop."""
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        with torch.autocast(chunk.device.type, dtype=torch.bfloat16, enabled=bf16):
            if tta:
                views = augment.tta_views(chunk, tta_crop)
                probs = model(views.flatten(0, 1)).float().softmax(-1).view(len(views), len(chunk), -1).mean(0)
            else:
                probs = model(augment.normalize(augment.to_float(chunk))).float().softmax(-1)
        out.append(probs)
    return torch.cat(out)


def evaluate(model: nn.Module, split: DeviceSplit, bf16: bool, tta: bool = False,
             tta_crop: int = 48) -> tuple[float, float, torch.Tensor]:
    """(loss, accuracy, probabilities) on a split."""
    probs = predict_proba(model, split.images, bf16, tta, tta_crop)
    loss = F.nll_loss(probs.clamp_min(1e-8).log(), split.labels).item()
    acc = (probs.argmax(1) == split.labels).float().mean().item()
    return loss, acc, probs


def val_accuracy(model_file: Path | dict, data: FerData, device: torch.device, tta: bool = False,
                 bf16: bool = False, as_trained: bool = False) -> tuple[float, dict]:
    """A checkpoint's (a file or a loaded one) val accuracy and its metrics report (per class, confusion matrix).
    `as_trained`: on the val images its run selected on (its config's val_subset), not the whole split."""
    ckpt = checkpoints.read_checkpoint(model_file) if isinstance(model_file, Path) else model_file
    model, cfg = checkpoints.model_from_checkpoint(ckpt, device)
    classes = checkpoints.require_classes(ckpt, data.classes, str(model_file) if isinstance(model_file, Path) else "the model",
                                          data.source)
    limit = cfg.val_subset if as_trained else 0
    split = to_device(*data.split("val"), device, limit, cfg.seed, cfg.pixels)
    _, acc, probs = evaluate(model, split, bf16, tta, cfg.crop)
    return acc, metrics.report(split.labels.cpu().numpy(), probs.argmax(1).cpu().numpy(), classes)
