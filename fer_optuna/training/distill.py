"""Knowledge distillation: a trained model (the teacher) answers for every train image, and the student
learns from those softened answers as well as from the labels (Hinton et al., 2015).

The teacher's answers are computed once per teacher file and train images, through the teacher's own
pixel pipeline (from its checkpoint, whatever the student's), and cached beside the parsed data: a run
then only indexes them, on the device, with its batch indices, and costs what it costs without a teacher.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from fer_optuna.errors import FerOptError
from . import augment, checkpoints
from .data import CLASSES
from .inference import pixels

# Bump when the answers are computed differently, so that old cached answers are not reused.
CACHE_VERSION = 1
# The image alone, not averaged with its mirror: the mirror doubles the pass for no gain (cnn3 on 6,000
# Training images, 5 epochs, 3 seeds: +1.77 points with one view, +1.68 with two; docs/studies.md).
VIEWS = 1
BATCH = 256


@dataclass(frozen=True)
class Teacher:
    name: str
    sha256: str  # of the teacher's model file
    logits: np.ndarray  # float32 (N, classes): the answers, one row per train image

    @property
    def provenance(self) -> dict:
        return {"name": self.name, "sha256": self.sha256, "views": VIEWS}


def teacher_path(name: str) -> Path:
    return checkpoints.model_file(name, "teacher")


def teacher_checkpoint(name: str, classes: tuple[str, ...], where: str = "") -> tuple[Path, dict]:
    """The teacher's model file and checkpoint, refused unless it was trained on the student's `classes`;
    `where` (e.g. a study file's section) begins the refusal."""
    path = teacher_path(name)
    ckpt = checkpoints.read_checkpoint(path)
    have = checkpoints.checkpoint_classes(ckpt)
    if have != tuple(classes):
        raise FerOptError(f"{where}teacher {name}: its classes ({', '.join(have)}) are not the student's "
                          f"({', '.join(classes)}); give a teacher trained on the same classes")
    return path, ckpt


def load_teacher(name: str, images: np.ndarray, device: torch.device, bf16: bool, cache_dir: Path,
                 log: Callable[[str], None] | None = print, classes: tuple[str, ...] = CLASSES) -> Teacher:
    """The teacher's answers for uint8 (N, 48, 48) train images: from the cache (in `cache_dir`), or computed and cached."""
    path, ckpt = teacher_checkpoint(name, classes)
    with open(path, "rb") as f:
        sha256 = hashlib.file_digest(f, "sha256").hexdigest()
    key = hashlib.sha256(f"v{CACHE_VERSION} views={VIEWS} bf16={bf16} {sha256}\n".encode())
    key.update(np.ascontiguousarray(images).data)
    target = cache_dir / "teachers" / f"{key.hexdigest()[:32]}.pt"
    cached = _read_cache(target, (len(images), len(classes)))
    if cached is not None:
        logits, seconds = cached
        if log is not None:
            log(f"teacher {name}: its answers for {len(images)} train images from the cache "
                f"(computed once in {seconds:.0f}s; {target})")
        return Teacher(name, sha256, logits)
    if log is not None:  # minutes on a CPU, with nothing else to show for them
        log(f"teacher {name}: computing its answers for {len(images)} train images ({VIEWS} view{'s' * (VIEWS > 1)}), once for this "
            f"data and teacher")
    start = time.perf_counter()
    logits = answers(ckpt, images, device, bf16, VIEWS)
    seconds = time.perf_counter() - start
    try:
        checkpoints.atomic_save({"logits": torch.from_numpy(logits), "seconds": seconds}, target)
        where = f"cached in {target}"
    except OSError:
        where = "not cached: the cache folder is not writable"  # costs only time, as for the data
    if log is not None:
        log(f"teacher {name}: its answers for {len(images)} train images ({VIEWS} view{'s' * (VIEWS > 1)}) computed in "
            f"{seconds:.0f}s; {where}")
    return Teacher(name, sha256, logits)


def _read_cache(target: Path, shape: tuple[int, int]) -> tuple[np.ndarray, float] | None:
    try:
        saved = torch.load(target, map_location="cpu", weights_only=True)
        logits, seconds = saved["logits"].numpy(), float(saved["seconds"])
    except Exception:  # missing or damaged: computed again
        return None
    return (logits, seconds) if logits.shape == shape else None


@torch.no_grad()
def answers(ckpt: dict, images: np.ndarray, device: torch.device, bf16: bool, views: int = VIEWS,
            batch_size: int = BATCH) -> np.ndarray:
    """A checkpoint's logits (N, classes) for uint8 (N, 48, 48) images, through its own pixel pipeline,
    averaged over the image and its mirror when `views` is 2."""
    model, cfg = checkpoints.model_from_checkpoint(ckpt, device)
    out = []
    for start in range(0, len(images), batch_size):
        x = augment.normalize(augment.to_float(pixels(images[start:start + batch_size], device, cfg.pixels)))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x).float()
            if views == 2:
                logits = (logits + model(x.flip(-1)).float()) / 2
        out.append(logits.cpu())
    return torch.cat(out).numpy()


def blend(ce: torch.Tensor, out: torch.Tensor, teacher: torch.Tensor, perm: torch.Tensor | None, lam: float,
          alpha: float, temperature: float) -> torch.Tensor:
    """(1 - alpha) x the labels' loss + alpha x T^2 x KL(teacher || student), both softened at T.

    T^2 keeps the soft term's gradients the size of the hard term's whatever T (Hinton et al.). On
    mixed images (mixup, CutMix) the teacher's answers are mixed as the labels are.
    """
    if alpha == 0:  # nothing else computed: such a run is the run without a teacher, bit for bit
        return ce
    target = (teacher / temperature).softmax(-1)
    if perm is not None:
        target = lam * target + (1 - lam) * target[perm]
    kl = F.kl_div((out.float() / temperature).log_softmax(-1), target, reduction="batchmean")
    return (1 - alpha) * ce + alpha * temperature**2 * kl
