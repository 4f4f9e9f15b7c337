"""The files a run leaves: model checkpoints, ensembles, and the per-epoch state a run resumes from.

A model checkpoint holds the weights and the full config, so evaluate and predict need
nothing else; it loads with `torch.load(weights_only=True)`, so a model file cannot run
code. Every file is written under a temporary name and renamed: a reader never sees half
of one, whenever the writer is killed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from fer_optuna.errors import FerOptError
from .config import TrainConfig, config_from_dict
from .data import CLASSES
from .files import PartialFile
from .models import build_model

CHECKPOINT_FORMAT = "fer-optuna/1"
WEIGHTS = Path(__file__).resolve().parent.parent / "weights"
# The model that ships inside the package: `predict`, `evaluate` and `Recognizer()` use it when given none.
BUNDLED_MODEL = WEIGHTS / "fer2013-best.pt"
# The models that ship, by the names `--model`, `Recognizer(model=)`, `init:` and `teacher:` take (docs/model.md):
# FER2013's seven classes, and the FER+ fine-tune of it with FER+'s eight.
BUNDLED = {"fer2013": BUNDLED_MODEL, "ferplus": WEIGHTS / "ferplus-best.pt"}
# FER+ names its emotions as nouns, FER2013 as adjectives: the same class under either name carries over.
SAME_CLASS = {"happiness": "happy", "sadness": "sad", "anger": "angry"}


def model_file(name: str | Path | None, role: str, flag: str | None = None) -> Path:
    """A bundled model's file by its name, or a checkpoint's path (None: the default bundled model); `role`
    (init, teacher, model) names the parameter, `flag` its command-line flag."""
    if name is None or str(name) == "":
        return BUNDLED_MODEL
    if str(name) in BUNDLED:
        return BUNDLED[str(name)]
    path = Path(name).expanduser()
    if not path.is_file():
        raise FerOptError(f"{role} {str(name)!r}: no such model file; give a bundled model's name "
                          f"({', '.join(BUNDLED)}) or the path of a checkpoint", flag=flag)
    return path


def carry_head(state: dict, head: str, fresh: dict, old: tuple[str, ...], new: tuple[str, ...]) -> dict:
    """`state` with its classifier layer (`head`.weight/.bias) rebuilt for the classes `new`: the rows of the
    classes both lists share (by name, in any case, FER+'s nouns as FER2013's adjectives) carried over from
    `old`, the others as freshly initialised in `fresh`."""
    def key(name: str) -> str:
        return SAME_CLASS.get(name.lower(), name.lower())

    rows = {key(c): i for i, c in enumerate(old)}
    out = dict(state)
    for part in ("weight", "bias"):
        name = f"{head}.{part}"
        out[name] = fresh[name].clone()
        for i, c in enumerate(new):
            if key(c) in rows:
                out[name][i] = state[name][rows[key(c)]].to(out[name].dtype)
    return out


def atomic_save(obj: Any, path: Path) -> None:
    with PartialFile(path) as tmp:
        torch.save(obj, tmp)


# --------------------------------------------------------------------------- models


def save_checkpoint(path: str | Path, model: nn.Module, cfg: TrainConfig, classes: tuple[str, ...] = CLASSES,
                    **meta: Any) -> None:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_save({"format": CHECKPOINT_FORMAT, "kind": "model", "config": cfg.to_dict(),
                 "classes": list(classes), "state_dict": state, "meta": meta}, Path(path))


def checkpoint_classes(ckpt: dict) -> tuple[str, ...]:
    """The model's class names, in its outputs' order; a file written before they were stored is FER2013's seven."""
    return tuple(str(c) for c in ckpt.get("classes") or CLASSES)


def require_classes(ckpt: dict, classes: tuple[str, ...], model: str, data: str) -> tuple[str, ...]:
    """The model's classes, which must be the data's (same names, same order): its scores are compared with the labels."""
    have = checkpoint_classes(ckpt)
    if have != tuple(classes):
        raise FerOptError(f"{model}: the model's classes ({', '.join(have)}) are not those of {data} "
                          f"({', '.join(classes)}); evaluate it on data with its classes")
    return have


def read_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint file safely: weights_only, so a model file cannot run code."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FerOptError(f"{path}: no such model file; train one with 'fer-opt train'") from None
    except Exception as e:  # torch raises many types for a foreign or damaged file
        raise FerOptError(f"{path}: not a fer-optuna model file ({str(e).splitlines()[0][:200]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise FerOptError(f"{path}: not a fer-optuna model file (no '{CHECKPOINT_FORMAT}' header)")
    return ckpt


class SoftVote(nn.Module):
    """An ensemble that averages its members' class probabilities (returned as log-probabilities)."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([m(x).float().softmax(-1) for m in self.members]).mean(0)
        return probs.clamp_min(1e-8).log()


def model_from_checkpoint(ckpt: dict, device: torch.device) -> tuple[nn.Module, TrainConfig]:
    """A single model, or a SoftVote for an ensemble file; both evaluate and predict alike."""
    members = ckpt["members"] if ckpt.get("kind") == "ensemble" else [ckpt]
    n_classes = len(checkpoint_classes(ckpt))
    models, configs = [], []
    for member in members:
        # Checkpoints from before the pixel pipeline was saved fed the model raw pixels.
        cfg = config_from_dict({"equalize": False, **member["config"]}, "checkpoint config")
        model = build_model(cfg.model, cfg.dropout, cfg.hidden_dim, cfg.width, n_classes)
        model.load_state_dict(member["state_dict"])
        models.append(model)
        configs.append(cfg)
    if len({c.pixels for c in configs}) > 1:
        raise FerOptError("the ensemble's members differ in their pixel pipeline (equalize, smooth); build it "
                          "from trials that share it")
    model = models[0] if len(models) == 1 and ckpt.get("kind") != "ensemble" else SoftVote(models)
    return model.to(device, memory_format=torch.channels_last).eval(), configs[0]


def half_precision(ckpt: dict) -> dict:
    """The model file with its float weights stored in fp16: half the size, and they load back as fp32.
    For the bundled model this moved PublicTest accuracy by at most 0.03 points (docs/model.md)."""
    if ckpt.get("kind") == "ensemble":
        raise FerOptError("fp16 weights are for a single model; export the ensemble's members one by one", flag="--fp16")
    state = {k: v.half() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    return {**ckpt, "state_dict": state, "meta": {**ckpt.get("meta", {}), "weights_stored_as": "float16"}}


def save_ensemble(path: str | Path, checkpoints: list[dict], **meta: Any) -> None:
    classes = {checkpoint_classes(c) for c in checkpoints}
    if len(classes) > 1:
        raise FerOptError("the ensemble's members have different classes; build it from trials on the same data")
    members = [{"config": c["config"], "state_dict": c["state_dict"], "meta": c.get("meta", {})} for c in checkpoints]
    atomic_save({"format": CHECKPOINT_FORMAT, "kind": "ensemble", "classes": list(classes.pop()), "members": members,
                 "config": members[0]["config"], "meta": meta}, Path(path))


# --------------------------------------------------------------------------- run state


def state_path(out: str | Path) -> Path:
    """Where a run that writes `out` keeps its per-epoch state: model.pt -> model.state.pt."""
    out = Path(out)
    return out.with_name(f"{out.stem}.state.pt")


def save_state(path: Path, cfg: TrainConfig, data_key: str, run: dict) -> None:
    """`run`: everything the run changes as it goes (weights, optimizer, schedule, RNG streams, history)."""
    atomic_save({"format": CHECKPOINT_FORMAT, "kind": "state", "config": cfg.to_dict(), "data": data_key, **run}, path)


def load_state(path: Path, cfg: TrainConfig, data_key: str) -> tuple[dict | None, str]:
    """The saved run, if it was made by this config on this data; else None and why not."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return None, "no saved state"
    except Exception as e:  # a damaged state file means a fresh start, never a crash
        return None, f"unreadable ({str(e).splitlines()[0][:100]})"
    if not isinstance(state, dict) or state.get("kind") != "state":
        return None, "not a fer-optuna run state"
    saved, now = state.get("config", {}), cfg.to_dict()
    changed = [f"{k} {saved.get(k)!r} -> {v!r}" for k, v in now.items() if k != "provenance" and saved.get(k) != v]
    if changed:
        return None, f"saved by a run with another config ({', '.join(changed[:4])})"
    if state.get("data") != data_key:
        return None, "saved by a run on other data"
    return state, ""


def saved_history(path: Path) -> list[dict]:
    """The epochs (EpochStats as dicts) the state at `path` holds; none if there is no state file."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return []
    except Exception as e:  # torch raises many types for a damaged file
        raise FerOptError(f"{path}: a damaged run state ({str(e).splitlines()[0][:100]}); delete it, and the run "
                          "starts afresh") from None
    if not isinstance(state, dict) or not isinstance(state.get("history"), list):
        raise FerOptError(f"{path}: not a fer-optuna run state (it holds no epoch history); delete it, and the run "
                          "starts afresh")
    return state["history"]
