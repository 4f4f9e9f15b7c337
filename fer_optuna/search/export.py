"""What leaves a study: the best trials' training configs, the best trial's model file and its ONNX
graph; and the conversion of a model file (fp16 weights, ONNX) without a study. `fer-opt export` is
these two calls."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import optuna

from fer_optuna.errors import FerOptError
from fer_optuna.options import StoreOptions
from fer_optuna.training import checkpoints
from fer_optuna.training.portable import export_onnx
from . import budget, rungs
from . import study as fer_study
from .report import TrialCheckpoints

Log = Callable[[str], None]


def export(study: optuna.Study, spec: fer_study.StudySpec, url: str, out: str | Path = "best.yaml", *, top: int = 1,
           rule: str | None = None, model_out: Path | None = None, onnx_out: Path | None = None, fp16: bool = False,
           log: Log = print, options: StoreOptions | None = None) -> list[Path]:
    """Write the `top` best feasible trials' configs to `out` (OUT-1.yaml ... with top > 1), or, with a rule
    (see budget.pick), the most accurate trial that keeps to it; `model_out` and `onnx_out` get that trial's
    model (the best one whose checkpoint can be had, without a rule). Returns the configs written."""
    if rule and top != 1:
        raise FerOptError("a rule chooses one trial; export one (top=1)", flag="--pick without --top")
    study, spec = rungs.top(study, spec, log)
    chosen = budget.pick(study, rule) if rule else None
    paths = fer_study.export(study, spec, out, top, url, rule, chosen)
    for path in paths:
        log(f"wrote {path}")
    if chosen is not None:
        log(f"picked trial {chosen.number}: val accuracy {chosen.values[0]:.4f}, {budget.format_costs(budget.costs_of(chosen))}")
    if len(paths) < top:
        log(f"the study has only {len(paths)} complete trial(s) so far")
    if model_out or onnx_out:
        trial, ckpt = best_model(study, url, chosen, log, options)
        if model_out:
            _save(ckpt, Path(model_out), fp16, log, f"trial {trial.number}, val accuracy {trial.values[0]:.4f}")
        if onnx_out:
            _onnx(ckpt, Path(onnx_out), log)
    return paths


def best_model(study: optuna.Study, url: str, chosen: optuna.trial.FrozenTrial | None = None, log: Log = print,
               options: StoreOptions | None = None) -> tuple[optuna.trial.FrozenTrial, dict]:
    """The best feasible trial whose checkpoint can be had (or `chosen`), and its checkpoint with the
    trial's provenance inside."""
    found = TrialCheckpoints(study, options)
    if chosen is not None and not found.reachable(chosen):
        raise FerOptError(f"trial {chosen.number}'s checkpoint is neither in the study's artifact store nor on this "
                          "machine; run the export where its worker ran")
    ranked = budget.ranked(study)
    [trial] = [chosen] if chosen is not None else found.best(1, ranked)
    if chosen is None and trial.number != ranked[0].number:
        log(f"the study's best trial, {ranked[0].number}, has its checkpoint on another machine")
    ckpt = found.load(trial)
    origin = fer_study.provenance(study, trial, url)
    trained = {k: trial.user_attrs[k] for k in ("device", "seconds", "epochs_run", "best_epoch") if k in trial.user_attrs}
    ckpt["config"] = {**ckpt["config"], "provenance": origin}
    ckpt["meta"] = {**ckpt["meta"], "provenance": origin, "trained": trained,
                    "study_file_text": fer_study.study_file_text(study)}
    return trial, ckpt


def convert(checkpoint: Path, *, model_out: Path | None = None, onnx_out: Path | None = None, fp16: bool = False,
            log: Log = print) -> None:
    """A model file as a copy (with fp16 weights: half the file, loading as fp32) and/or as ONNX."""
    if not (onnx_out or model_out):
        raise FerOptError("converting a model file needs a target: an ONNX file, or a model file with fp16 weights",
                          flag="--onnx OUT.onnx, or --model OUT.pt --fp16")
    ckpt = checkpoints.read_checkpoint(checkpoints.model_file(checkpoint, "checkpoint", "--checkpoint"))
    if model_out:
        _save(ckpt, Path(model_out), fp16, log)
    if onnx_out:
        _onnx(ckpt, Path(onnx_out), log)


def _save(ckpt: dict, out: Path, fp16: bool, log: Log, what: str = "") -> None:
    checkpoints.atomic_save(checkpoints.half_precision(ckpt) if fp16 else ckpt, out)
    log(f"wrote {out}: {what + ', ' if what else ''}{out.stat().st_size / 2**20:.1f} MB{', fp16 weights' if fp16 else ''}")


def _onnx(ckpt: dict, out: Path, log: Log) -> None:
    cfg = export_onnx(ckpt, out)
    log(f"wrote {out}: {cfg.model}, equalize {cfg.equalize}, smooth {cfg.smooth}, {out.stat().st_size / 2**20:.1f} MB; "
        f"run it with `fer-opt predict --model {out} PHOTO` or any ONNX runtime")
