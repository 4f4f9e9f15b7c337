"""Training configuration: one frozen dataclass, read from and written to YAML.

The field names are the study's parameter names, so a study's best trial exports
to exactly the file `fer-opt train --config` reads.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fer_optuna.errors import FerOptError

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("plateau", "cosine", "onecycle", "none")
PRECISIONS = ("auto", "bf16", "fp32")
CLASS_WEIGHTS = ("none", "balanced")
TARGETS = ("majority", "distribution")


@dataclass(frozen=True)
class PixelPipeline:
    """What every image goes through before the model; the defaults are raw pixels."""

    equalize: bool = False
    smooth: float = 0.0


@dataclass(frozen=True)
class TrainConfig:
    model: str = "cnn3"
    epochs: int = 25
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-5
    dropout: float = 0.3
    hidden_dim: int = 128
    width: float = 1.0  # channel multiplier of the vgg/resnet families
    optimizer: str = "adam"
    momentum: float = 0.9  # sgd only (Nesterov)
    scheduler: str = "plateau"
    warmup_epochs: float = 0.0  # cosine only: linear warm-up before the decay
    label_smoothing: float = 0.0
    # What train labels the loss sees when the data has FER+ votes: each face's majority label, or the
    # votes' distribution as a soft target. Val and test are always scored on majority labels.
    target: str = "majority"
    class_weights: str = "none"
    # The pixel pipeline, saved in every checkpoint and applied before anything else in
    # training, evaluation, prediction and ONNX: per-image histogram equalisation makes the
    # original FER2013 pixels and contrast-processed copies of them look alike to the model;
    # a light Gaussian low-pass after it (sigma in pixels; 0 = off) removes what equalisation
    # cannot, the JPEG blocks and pixel noise by which the editions still differ.
    equalize: bool = True
    smooth: float = 0.0
    # Augmentation, batched on the device (see augment.py).
    flip: bool = True
    rotation: float = 10.0  # degrees, uniform in [-rotation, rotation]
    shift: float = 0.0  # fraction of the side, uniform in [-shift, shift]
    crop: int = 48  # random crop side in pixels, resized back to 48
    erasing: float = 0.0  # probability of random erasing per image
    # Probability of showing a train image as its degraded copy (augment.degraded_copies):
    # what other editions of FER2013 did to the faces (contrast stretched and saturated, JPEG).
    degrade: float = 0.0
    mixup: float = 0.0  # Beta(a, a) parameter; 0 turns mixup off
    cutmix: float = 0.0  # Beta(a, a) parameter; 0 turns CutMix off
    ema: float = 0.0  # decay of an exponential moving average of weights; 0 = off
    drop_blank: bool = False  # leave out blank (one-valued) train images
    drop_cross_split: bool = False  # leave out train images whose pixels also appear in val or test
    train_subset: int = 0  # use a seeded, stratified subset of this many train images; 0 = all
    val_subset: int = 0
    patience: int = 0  # stop after this many epochs without a better val accuracy; 0 = never
    seed: int = 0
    # A checkpoint whose weights start this run (fine-tuning): a bundled model's name (fer2013) or a path;
    # "" = random init. With other classes than the data's, the head is new but for the shared classes' rows.
    init: str = ""
    # Fine-tuning: the first `freeze` conv layers (each with its BatchNorm, held in eval mode) keep the init
    # checkpoint's weights; 0 = nothing frozen. The vgg family has 8, cnn3 3 (freeze.py).
    freeze: int = 0
    # Knowledge distillation (distill.py): a bundled model's name (fer2013) or a checkpoint path;
    # "" = none. The loss is (1 - alpha) x cross-entropy + alpha x T^2 x KL(teacher || student) at T.
    teacher: str = ""
    distill_alpha: float = 0.7
    distill_temperature: float = 3.0
    precision: str = "auto"  # bf16 autocast where the hardware has it
    provenance: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        from .models import MODELS

        checks = [
            (self.model in MODELS, "model", f"one of {', '.join(MODELS)}"),
            (self.epochs >= 1, "epochs", "at least 1"),
            (self.batch_size >= 1, "batch_size", "at least 1"),
            (self.lr > 0, "lr", "positive"),
            (self.weight_decay >= 0, "weight_decay", "0 or more"),
            (0 <= self.dropout < 1, "dropout", "in [0, 1)"),
            (self.hidden_dim >= 1, "hidden_dim", "at least 1"),
            (self.width > 0, "width", "positive"),
            (self.optimizer in OPTIMIZERS, "optimizer", f"one of {', '.join(OPTIMIZERS)}"),
            (self.scheduler in SCHEDULERS, "scheduler", f"one of {', '.join(SCHEDULERS)}"),
            (0 <= self.label_smoothing < 1, "label_smoothing", "in [0, 1)"),
            (self.target in TARGETS, "target", f"one of {', '.join(TARGETS)}"),
            (self.class_weights in CLASS_WEIGHTS, "class_weights", f"one of {', '.join(CLASS_WEIGHTS)}"),
            (16 <= self.crop <= 48, "crop", "between 16 and 48 pixels"),
            (0 <= self.erasing <= 1, "erasing", "a probability in [0, 1]"),
            (0 <= self.smooth <= 3, "smooth", "a sigma in pixels between 0 and 3"),
            (0 <= self.degrade <= 1, "degrade", "a probability in [0, 1]"),
            (0 <= self.ema < 1, "ema", "in [0, 1)"),
            (0 <= self.distill_alpha <= 1, "distill_alpha", "in [0, 1]"),
            (self.distill_temperature > 0, "distill_temperature", "positive"),
            (self.freeze >= 0, "freeze", "0 (nothing frozen) or the number of leading conv layers to freeze"),
            (self.precision in PRECISIONS, "precision", f"one of {', '.join(PRECISIONS)}"),
        ]
        for ok, name, expected in checks:
            if not ok:
                raise FerOptError(f"config field '{name}' is {getattr(self, name)!r}; it must be {expected}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def pixels(self) -> "PixelPipeline":
        return PixelPipeline(self.equalize, self.smooth)

    def replace(self, **changes: Any) -> "TrainConfig":
        return config_from_dict({**self.to_dict(), **changes})


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def config_from_dict(values: dict[str, Any], source: str = "config") -> TrainConfig:
    """Build a config, refusing unknown keys and coercing YAML's types."""
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise FerOptError(
            f"{source}: unknown field(s) {', '.join(unknown)}; known fields are {', '.join(FIELDS)}"
        )
    coerced = {}
    for name, value in values.items():
        kind = type(TrainConfig.__dataclass_fields__[name].default)
        if name == "provenance" or value is None:
            coerced[name] = value if value is not None else {}
            continue
        try:
            if kind is bool and not isinstance(value, bool):
                raise ValueError
            if kind is int and float(value) != int(float(value)):
                raise ValueError
            coerced[name] = kind(int(float(value))) if kind is int else kind(value)
        except (TypeError, ValueError):
            raise FerOptError(f"{source}: field '{name}' is {value!r}; expected a {kind.__name__}") from None
    try:
        return TrainConfig(**coerced)
    except FerOptError as e:
        raise FerOptError(f"{source}: {e}") from None


def load_config(path: str | Path) -> TrainConfig:
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise FerOptError(f"{path}: no such config file") from None
    except yaml.YAMLError as e:
        raise FerOptError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise FerOptError(f"{path}: expected a YAML mapping of config fields, got {type(values).__name__}")
    return config_from_dict(values, source=str(path))


def dump_config(config: TrainConfig, path: str | Path, header: str = "") -> None:
    text = yaml.safe_dump(config.to_dict(), sort_keys=False)
    Path(path).write_text((header + "\n" if header else "") + text)
