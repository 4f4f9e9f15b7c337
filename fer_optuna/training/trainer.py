"""One short training loop: `train(config, data, on_epoch=...)`.

The whole dataset lives on the device as uint8; batches are indexed, augmented
and normalised there. The loop keeps the checkpoint with the best val accuracy,
holding the weights and the full config, so evaluate/predict need nothing else.
Nothing here knows about Optuna: the study service stops a run through `on_epoch`.
"""

from __future__ import annotations

import copy
import hashlib
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from fer_optuna.errors import FerOptError
from fer_optuna.options import Settings
from . import augment, checkpoints, distill, freeze
from .config import TrainConfig
from .data import FerData, for_target
from .inference import DeviceSplit, evaluate, to_device
from .models import build_model, count_parameters
from .quality import clean


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float
    seconds: float


@dataclass
class TrainResult:
    best_val_acc: float
    best_epoch: int
    epochs_run: int
    seconds: float
    n_params: int
    history: list[EpochStats] = field(default_factory=list)
    resumed_at: int = 0  # the epoch a resumed run started after; 0 for a fresh run


class NonFiniteLoss(FerOptError):
    """The training loss became NaN or infinite: the run cannot recover."""


# --------------------------------------------------------------------------- device


def resolve_device(spec: str | None = None) -> torch.device:
    """'cpu', 'cuda', 'cuda:1' or a bare GPU index; None picks CUDA when present."""
    if spec is None or spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    spec = f"cuda:{spec}" if spec.isdigit() else spec
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise FerOptError(f"device {spec!r} asked for, but CUDA is not available here; run on the CPU instead (cpu)")
        if (device.index or 0) >= torch.cuda.device_count():
            raise FerOptError(f"device {spec!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
    return device


def use_bf16(precision: str, device: torch.device, cpu_bf16: bool | None = None) -> bool:
    """Training's precision: `auto` is bf16 autocast where the hardware runs it natively.

    `cpu_bf16` overrides the CPU's detection (Settings.cpu_bf16, FER_OPT_CPU_BF16): False keeps `auto`
    training in fp32 on any CPU, True takes the bf16 path on a CPU without it (slowly), to test what
    such a machine would do.
    """
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return cpu_has_native_bf16() if cpu_bf16 is None else cpu_bf16


def cpu_has_native_bf16() -> bool:
    """Whether this CPU runs bf16 natively (AVX512-bf16, AMX); on others the autocast path is slower than fp32."""
    if torch.backends.cpu.get_cpu_capability() not in ("AVX512", "AMX"):
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


# --------------------------------------------------------------------------- building blocks


def make_optimizer(cfg: TrainConfig, model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
    params = [p for p in model.parameters() if p.requires_grad]  # frozen layers (freeze.py) stay out
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay, **fast)
    opt = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return opt(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fast)


def make_scheduler(cfg: TrainConfig, opt: torch.optim.Optimizer, steps_per_epoch: int):
    """Returns (scheduler, stepped per batch?)."""
    total = cfg.epochs * steps_per_epoch
    if cfg.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=3), False
    if cfg.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total), True
    if cfg.scheduler == "cosine":
        warmup = int(cfg.warmup_epochs * steps_per_epoch)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

        return torch.optim.lr_scheduler.LambdaLR(opt, factor), True
    return None, False


def class_weights(cfg: TrainConfig, labels: torch.Tensor, n_classes: int) -> torch.Tensor | None:
    if cfg.class_weights == "none":
        return None
    counts = torch.bincount(labels, minlength=n_classes).float().clamp(min=1)
    weights = counts.sum() / (n_classes * counts)
    return weights / weights.mean()


def _batches(n: int, batch_size: int, gen: torch.Generator, device: torch.device):
    """Shuffled index batches; the last partial batch is dropped (BatchNorm dislikes tiny ones)."""
    perm = torch.randperm(n, generator=gen, device=device)
    size = min(batch_size, n)
    return perm[: n - n % size].view(-1, size)


class EMA:
    """Exponential moving average of the weights and BatchNorm statistics.

    The decay warms up as min(decay, (1 + n) / (10 + n)): with a fixed 0.999, the average
    after 4 epochs of FER2013 was still 40% random init and predicted one class, which
    made early-epoch val accuracy (what the pruner sees) meaningless. The step count lives
    on the host, so an update never waits for the device.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.steps = decay, 0

    def _pairs(self, model: nn.Module):
        mine = [*self.module.parameters(), *self.module.buffers()]
        theirs = [*model.parameters(), *model.buffers()]
        floats = [i for i, t in enumerate(mine) if t.is_floating_point()]
        return [mine[i] for i in floats], [theirs[i].detach() for i in floats]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.steps += 1
        decay = min(self.decay, (1 + self.steps) / (10 + self.steps))
        mine, theirs = self._pairs(model)
        torch._foreach_lerp_(mine, theirs, 1 - decay)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.steps = state["steps"]


# --------------------------------------------------------------------------- one run's moving parts


@dataclass
class Run:
    """Everything a training run changes as it goes; saved after every epoch, so that a run resumes exactly."""

    model: nn.Module
    opt: torch.optim.Optimizer
    sched: Any  # an LR scheduler or None
    per_step: bool  # is the scheduler stepped per batch (else per epoch, on val accuracy)?
    ema: EMA | None
    gen: torch.Generator  # augmentation and shuffling, on the device
    rng: np.random.Generator  # mixup/CutMix draws, on the host
    loss_fn: nn.Module
    bf16: bool
    frozen: list[nn.Module] = field(default_factory=list)  # BatchNorms held in eval mode (freeze.py)

    @property
    def scored(self) -> nn.Module:
        """The weights that are evaluated and saved: the EMA average when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def state_dict(self, result: TrainResult) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict() if self.sched is not None else None,
                "ema": self.ema.state_dict() if self.ema is not None else None, "generator": self.gen.get_state(),
                "torch_rng": torch.get_rng_state(), "numpy_rng": self.rng.bit_generator.state,
                "history": [vars(h) for h in result.history], "best_val_acc": result.best_val_acc,
                "best_epoch": result.best_epoch}

    def load_state_dict(self, state: dict, result: TrainResult) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        if self.sched is not None:
            self.sched.load_state_dict(state["scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.rng.bit_generator.state = state["numpy_rng"]
        result.history = [EpochStats(**h) for h in state["history"]]
        result.best_val_acc, result.best_epoch = state["best_val_acc"], state["best_epoch"]
        result.resumed_at = result.epochs_run = len(result.history)


# --------------------------------------------------------------------------- train / evaluate


def _mix(x: torch.Tensor, n: int, cfg: TrainConfig, run: Run) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """Mixup or CutMix on half the batches: (images, the order of the images mixed in, the first images' weight)."""
    if not (cfg.mixup > 0 or cfg.cutmix > 0) or run.rng.random() >= 0.5:
        return x, None, 1.0
    perm = torch.randperm(n, generator=run.gen, device=x.device)
    if cfg.cutmix > 0 and (cfg.mixup == 0 or run.rng.random() < 0.5):
        mask, lam = augment.cutmix_box(run.rng.beta(cfg.cutmix, cfg.cutmix), run.rng, x.device)
        return torch.where(mask, x[perm], x), perm, lam
    lam = float(run.rng.beta(cfg.mixup, cfg.mixup))
    return lam * x + (1 - lam) * x[perm], perm, lam


def train_epoch(run: Run, train: DeviceSplit, cfg: TrainConfig, bar=None) -> tuple[float, float]:
    """One pass over the train split; (mean loss, accuracy)."""
    model = run.model.train()
    freeze.hold(run.frozen)
    dev = train.images.device
    total_loss = torch.zeros((), device=dev)
    correct = torch.zeros((), device=dev, dtype=torch.long)
    seen = 0
    for step, idx in enumerate(_batches(len(train), cfg.batch_size, run.gen, dev)):
        x_u8 = train.images[idx]
        if train.degraded is not None:
            x_u8 = augment.pick_degraded(x_u8, train.degraded[idx], cfg.degrade, run.gen)
        y = train.labels[idx]
        target = train.soft[idx] if train.soft is not None else y  # cross-entropy takes either
        x, perm, lam = _mix(augment.augment(x_u8, cfg, run.gen), len(y), cfg, run)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=run.bf16):
            out = model(x)
            loss = (run.loss_fn(out, target) if lam == 1.0
                    else lam * run.loss_fn(out, target) + (1 - lam) * run.loss_fn(out, target[perm]))
            if train.teacher is not None:
                # The teacher answered for the image before augmentation (and its mirror), not for this
                # view of it: a flip, a 10-degree turn or a small crop keeps the expression, so the clean
                # image's answer is the standard target (cached, offline distillation), and a teacher pass
                # per step would cost many student steps.
                loss = distill.blend(loss, out, train.teacher[idx], perm, lam, cfg.distill_alpha,
                                     cfg.distill_temperature)
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        run.opt.step()
        if run.per_step:
            run.sched.step()
        if run.ema is not None:
            run.ema.update(model)
        total_loss += loss.detach() * len(y)
        correct += (out.argmax(1) == y).sum()
        seen += len(y)
        if bar is not None:
            bar.update(len(y))
            if step % 20 == 0:  # reading the running loss syncs the device: not every step
                bar.set_postfix(loss=f"{total_loss.item() / seen:.3f}", acc=f"{correct.item() / seen:.3f}")
    train_loss, train_acc = total_loss.item() / seen, correct.item() / seen
    if not math.isfinite(train_loss):
        raise NonFiniteLoss(f"training loss became {train_loss} (lr {cfg.lr:g}, batch {cfg.batch_size}); try a lower lr")
    return train_loss, train_acc


# --------------------------------------------------------------------------- the loop


def _progress(enabled: bool | None, total: int, epoch: int, epochs: int):
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=f"epoch {epoch}/{epochs}", unit="img", leave=False, dynamic_ncols=True)


def _load_init(model: nn.Module, cfg: TrainConfig, classes: tuple[str, ...]) -> None:
    """The init checkpoint's weights; for other classes than the data's, a new head with the shared classes' rows."""
    ckpt = checkpoints.read_checkpoint(checkpoints.model_file(cfg.init, "init"))
    if ckpt.get("kind") != "model":
        raise FerOptError(f"init {cfg.init}: an ensemble cannot start a run; give a single model's checkpoint")
    state = ckpt["state_dict"]
    if checkpoints.checkpoint_classes(ckpt) != classes:
        head = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
        state = checkpoints.carry_head(state, head, model.state_dict(), checkpoints.checkpoint_classes(ckpt), classes)
    try:
        model.load_state_dict(state)
    except RuntimeError:
        raise FerOptError(f"init {cfg.init}: its weights do not fit {cfg.model} (width {cfg.width}, hidden_dim "
                          f"{cfg.hidden_dim}); the config must have the checkpoint's model, width and hidden_dim") from None


def data_key(data: FerData) -> str:
    """A digest of the train and val images and labels, and of the soft targets: a saved run resumes only on
    the data it was made on (votes that keep each face's top emotion still change a distribution target)."""
    digest = hashlib.blake2b(digest_size=16)
    for array in (data.images.get("train"), data.labels.get("train"), data.images.get("val"), data.labels.get("val"),
                  data.soft):
        if array is not None:
            digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


def _start(cfg: TrainConfig, train_split: DeviceSplit, classes: tuple[str, ...], device: torch.device,
           cpu_bf16: bool | None) -> tuple[Run, int]:
    """A fresh run: (its moving parts, optimizer steps per epoch)."""
    n_classes = len(classes)
    model = build_model(cfg.model, cfg.dropout, cfg.hidden_dim, cfg.width, n_classes)
    if cfg.init:
        _load_init(model, cfg, classes)
    frozen = freeze.freeze(model, cfg.freeze, cfg.model)
    model = model.to(device, memory_format=torch.channels_last)
    opt = make_optimizer(cfg, model, device)
    steps = len(train_split) // min(cfg.batch_size, len(train_split))  # _batches drops the partial batch
    sched, per_step = make_scheduler(cfg, opt, steps)
    loss_fn = nn.CrossEntropyLoss(weight=class_weights(cfg, train_split.labels, n_classes), label_smoothing=cfg.label_smoothing)
    run = Run(model, opt, sched, per_step, EMA(model, cfg.ema) if cfg.ema > 0 else None,
              torch.Generator(device).manual_seed(cfg.seed), np.random.default_rng(cfg.seed), loss_fn,
              use_bf16(cfg.precision, device, cpu_bf16), frozen)
    return run, steps


def train(cfg: TrainConfig, data: FerData, *, device: torch.device | None = None,
          on_epoch: Callable[[EpochStats], bool | None] | None = None,
          checkpoint: str | Path | None = None, state: str | Path | None = None, progress: bool | None = None,
          log: Callable[[str], None] | None = print, settings: Settings | None = None) -> TrainResult:
    """Train on data's train split, select on its val split. `on_epoch` may return True to stop.

    With `state`, the whole run (weights, optimizer, schedule, RNG streams) is saved
    there after every epoch, and a run that finds the file, made by the same config on
    the same data, resumes after its last epoch and ends with the same weights as one
    that was never stopped. `settings`: the CPU's bf16 (see use_bf16) and the cache folder of a
    teacher's answers. `log` takes the run's notices (the teacher's answers, a resume) and, unless
    `on_epoch` reports the epochs itself, a line per epoch.
    """
    device = device or resolve_device()
    settings = settings or Settings()
    data = clean(for_target(data, cfg.target), cfg.drop_blank, cfg.drop_cross_split)
    teacher = None
    if cfg.teacher:  # before seeding: building the teacher draws from torch's generator
        teacher = distill.load_teacher(cfg.teacher, data.split("train")[0], device,
                                       use_bf16(cfg.precision, device, settings.cpu_bf16), settings.data.cache_dir, log,
                                       data.classes)
    torch.manual_seed(cfg.seed)
    train_split = to_device(*data.split("train"), device, cfg.train_subset, cfg.seed, cfg.pixels, cfg.degrade > 0,
                            teacher.logits if teacher is not None else None, data.soft)
    val_split = to_device(*data.split("val"), device, cfg.val_subset, cfg.seed, cfg.pixels)
    run, steps = _start(cfg, train_split, data.classes, device, settings.cpu_bf16)
    result = TrainResult(best_val_acc=-1.0, best_epoch=0, epochs_run=0, seconds=0.0, n_params=count_parameters(run.model))
    key = (data_key(data) + (teacher.sha256 if teacher is not None else "")) if state is not None else ""
    if state is not None and Path(state).exists():
        saved, why_not = checkpoints.load_state(Path(state), cfg, key)
        if saved is not None:
            run.load_state_dict(saved, result)
            if log is not None:
                log(f"resuming after epoch {result.resumed_at} of {cfg.epochs} (saved in {state})")
        elif log is not None:
            log(f"{state}: {why_not}; starting afresh")
    start = time.perf_counter()
    for epoch in range(result.resumed_at + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        bar = _progress(progress, steps * min(cfg.batch_size, len(train_split)), epoch, cfg.epochs)
        try:
            train_loss, train_acc = train_epoch(run, train_split, cfg, bar)
        finally:
            if bar is not None:
                bar.close()
        # Scored in fp32 whatever the training precision: the value a study selects on is then the
        # one `fer-opt evaluate` reproduces from the checkpoint, on any machine.
        val_loss, val_acc, _ = evaluate(run.scored, val_split, bf16=False)
        if run.sched is not None and not run.per_step:
            run.sched.step(val_acc)
        stats = EpochStats(epoch, train_loss, train_acc, val_loss, val_acc, run.opt.param_groups[0]["lr"],
                           time.perf_counter() - t0)
        result.history.append(stats)
        result.epochs_run = epoch
        if val_acc > result.best_val_acc:
            result.best_val_acc, result.best_epoch = val_acc, epoch
            if checkpoint is not None:
                checkpoints.save_checkpoint(checkpoint, run.scored, cfg, data.classes, val_accuracy=val_acc, epoch=epoch,
                                            source=data.source, **({"teacher": teacher.provenance} if teacher else {}))
        if state is not None:
            checkpoints.save_state(Path(state), cfg, key, run.state_dict(result))
        if log is not None and on_epoch is None:
            log(f"epoch {epoch:3d}/{cfg.epochs}  train loss {train_loss:.4f} acc {train_acc:.4f}  "
                f"val loss {val_loss:.4f} acc {val_acc:.4f}  lr {stats.lr:.2e}  {stats.seconds:.1f}s")
        stop = on_epoch(stats) if on_epoch is not None else False
        if stop or (cfg.patience and epoch - result.best_epoch >= cfg.patience):
            break
    result.seconds = time.perf_counter() - start
    return result
