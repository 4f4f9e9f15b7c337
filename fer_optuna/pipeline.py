"""Whole jobs: a resumable fit of one config (`fer-opt train`), and the main job (`fer-opt run`):
create the study, run workers, export the best config, fit it on all the data.

On a machine with GPUs the main job runs the full fer2013-cnn3 study with workers on
every GPU; on a CPU-only machine it runs the quick study, which searches on a proxy
and then fits the best configuration on all the data (its final: section). Both ship
in the package (search/shipped.py).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable

import torch

from . import interrupts
from .errors import FerOptError
from .options import DataOptions, Settings
from .search import rungs, shipped
from .search import study as fer_study
from .search import worker as fer_worker
from .search.storage import mask_url, open_storage, storage_url
from .training import checkpoints, inference, metrics, trainer
from .training import data as fer_data
from .training.config import TrainConfig, load_config

def fit(cfg: TrainConfig, data: fer_data.FerData, out: Path, device: torch.device, log: Callable[[str], None] = print,
        what: str = "training", settings: Settings | None = None) -> trainer.TrainResult:
    """Train `cfg` into `out`, resumably: the run's state is saved beside `out` after every epoch
    (model.pt -> model.state.pt), and the same command after Ctrl-C, SIGTERM or a crash resumes
    after the last finished epoch and ends with the same weights as a run never stopped."""
    out = Path(out)
    state = checkpoints.state_path(out)
    if out.exists() and not state.exists():
        log(f"{out} exists: this run replaces it with its best epoch")
    with interrupts.first_signal_raises() as received:
        try:
            result = trainer.train(cfg, data, device=device, checkpoint=out, state=state, log=log, settings=settings)
        except KeyboardInterrupt:
            signum = interrupts.first_signal(received)
            done = len(checkpoints.saved_history(state))
            raise interrupts.Interrupted(signum, f"{what} stopped by {signum.name} after epoch {done} of {cfg.epochs}; "
                                         "run the same command again to resume") from None
    state.unlink(missing_ok=True)  # the run is whole: a rerun starts afresh
    return result


def train(config: Path | None, data_path: str | Path, *, out: Path = Path("model.pt"), device: str = "auto",
          overrides: dict | None = None, resize: bool = False, log: Callable[[str], None] = print,
          settings: Settings | None = None, labels: str | Path | None = None) -> trainer.TrainResult:
    """`fer-opt train`: a config file (else the defaults) with `overrides`, fitted resumably on the data (labelled
    by FER+ votes when `labels` are given) into `out`."""
    settings = settings or Settings()
    cfg = (load_config(config) if config else TrainConfig()).replace(**(overrides or {}))
    dev = trainer.resolve_device(device)
    loaded = fer_data.load(data_path, resize=resize, options=settings.data, labels=labels)
    for note in loaded.notes:
        log(f"note: {note}")
    log(f"training {cfg.model} on {dev} for {cfg.epochs} epochs (batch {cfg.batch_size}, lr {cfg.lr:g}) -> {out}")
    result = fit(cfg, loaded, out, dev, log, settings=settings)
    ran = result.epochs_run - result.resumed_at
    log(f"best val accuracy {result.best_val_acc:.4f} at epoch {result.best_epoch}/{result.epochs_run} "
        f"in {result.seconds:.0f}s ({result.seconds / max(ran, 1):.1f}s/epoch); saved {out}")
    return result


def evaluate(model_path: Path | None, data_path: str | Path, *, split: str = "val", tta: bool = False, device: str = "auto",
             precision: str = "fp32", plot: Path | None = None,
             options: DataOptions | None = None, labels: str | Path | None = None) -> tuple[dict, str]:
    """`fer-opt evaluate`: a model file's or a bundled model's (by name; default fer2013) report on a split (metrics.report, and
    what was scored), and its architecture; `plot` gets the confusion matrix as a PNG."""
    dev = trainer.resolve_device(device)
    model_path = checkpoints.model_file(model_path, "model", "--model")
    ckpt = checkpoints.read_checkpoint(model_path)
    model, cfg = checkpoints.model_from_checkpoint(ckpt, dev)
    loaded = fer_data.for_target(fer_data.load(data_path, options=options, labels=labels), "majority")
    classes = checkpoints.require_classes(ckpt, loaded.classes, str(model_path), str(data_path))
    images, labels = loaded.split(split)
    split_data = inference.to_device(images, labels, dev, pipeline=cfg.pixels)
    _, _, probs = inference.evaluate(model, split_data, inference.inference_bf16(precision), tta=tta, tta_crop=cfg.crop)
    rep = metrics.report(labels, probs.argmax(1).cpu().numpy(), classes)
    rep |= {"split": split, "model": str(model_path), "tta": tta, "inference_precision": precision}
    if plot:
        metrics.plot_confusion(rep, plot, f"{model_path.name} on {split}: accuracy {rep['accuracy']:.3f}")
    return rep, cfg.model


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


class _Dashboard:
    """The dashboard beside the main job: its output goes to a log file, and its death is said when it happens."""

    def __init__(self, url: str, port: int, log_path: Path, log):
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "fer_optuna.cli", "dashboard", "--port", str(port)],
                                         env={**os.environ, "FER_OPT_STORAGE": url},  # not in argv: `ps` shows argv
                                         stdout=out, stderr=subprocess.STDOUT)
        self.stopping = threading.Event()
        self.watcher = threading.Thread(target=self._watch, args=(log_path, log), daemon=True)
        self.watcher.start()

    def _watch(self, log_path: Path, log) -> None:
        code = self.proc.wait()
        if not self.stopping.is_set():
            log(f"the dashboard exited (status {code}); the study goes on without it; its output: {log_path}")

    def stop(self) -> None:
        self.stopping.set()
        self.proc.terminate()


def _dashboard(url: str, port: int, log_path: Path, log) -> _Dashboard | None:
    if not port:
        return None
    if not _port_free(port):
        log(f"port {port} is busy: not starting a dashboard (fer-opt dashboard --port N starts one)")
        return None
    log(f"dashboard: http://127.0.0.1:{port}/dashboard/ (while the study runs; later: fer-opt dashboard); "
        f"its output: {log_path}")
    return _Dashboard(url, port, log_path, log)


def run(data_path: str, *, storage: str | None = None, spec_path: str | None = None, out_dir: Path = Path("runs"),
        gpu: str = "all", port: int = 8080, checkpoint_dir: str = "studies/checkpoints", log=print,
        settings: Settings | None = None, labels: str | None = None) -> Path:
    """The main job; returns the final model's path. `spec_path`: a study file or a shipped study's
    name [default: fer2013-cnn3 with GPUs, quick on CPU]; `port`: the dashboard's, 0 for none; `labels`:
    FER+ votes for a new study, or this machine's copy of a study's (none: the study's, searched and fitted on)."""
    settings = settings or Settings()
    devices = fer_worker.parse_devices(gpu)
    spec_path = shipped.find(spec_path or ("quick" if devices == ["cpu"] else "fer2013-cnn3"))
    url = storage_url(storage)
    created, new = fer_study.create(spec_path, url, data=data_path, skip_if_exists=True, options=settings.stores,
                                    labels=labels, data_options=settings.data)
    labels = fer_study.study_labels(created, labels)
    name = created.study_name
    log(f"study {name} {'created' if new else 'resumed'} on {mask_url(url)} from {spec_path}")
    dashboard = _dashboard(url, port, out_dir / "dashboard.log", log)
    try:
        # One worker is repeatable (seed offset 0); several draw different startup trials.
        opts = fer_worker.WorkerOptions(study=name, storage=url, device=devices[0], data=data_path,
                                        labels=labels, checkpoint_dir=checkpoint_dir, seed_offset=0, settings=settings)
        per = fer_worker.auto_per_device(devices)
        log(f"workers: {per} per device on {', '.join(devices)}")
        code = fer_worker.launch(opts, devices, per)
    finally:
        if dashboard is not None:
            dashboard.stop()
    if code >= 128:
        raise interrupts.Interrupted(code - 128, "the study's workers were stopped; run the same command again to go on")
    if code:
        raise FerOptError(f"a worker failed (exit status {code}; its output is above); fix that and run the same command again")
    found, spec = fer_study.load_study(name, open_storage(url, options=settings.stores))
    log(fer_study.format_status(fer_study.status(found, spec), url))
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = out_dir / "best.pt"
    if spec.rungs and not spec.final:  # the top rung's winner trained as a refit would: its checkpoint is the model
        return _top_rung_model(found, spec, url, model_path, log, settings)
    [best_yaml] = fer_study.export(*rungs.top(found, spec, log), out_dir / "best.yaml", 1, url)
    cfg = load_config(best_yaml)
    log(f"training the final model from {best_yaml} ({cfg.model}, {cfg.epochs} epochs, "
        f"{'all' if not cfg.train_subset else cfg.train_subset} train images) -> {model_path}")
    result = fit(cfg, fer_data.load(data_path, options=settings.data, labels=labels), model_path, trainer.resolve_device(devices[0]), log,
                 "final fit", settings)
    log(f"final model: val (PublicTest) accuracy {result.best_val_acc:.4f}; saved {model_path}")
    log(f"next: fer-opt evaluate --model {model_path} --data {data_path}{f' --labels {labels}' if labels else ''} --split val")
    return model_path


def _top_rung_model(study, spec, url: str, model_path: Path, log, settings: Settings) -> Path:
    """The main job's model from a study with rungs and no final: section: its top rung's best trial's
    checkpoint (and config beside it), with no refit."""
    from .search import export as fer_export

    fer_export.export(study, spec, url, model_path.with_suffix(".yaml"), model_out=model_path, log=log,
                      options=settings.stores)
    labels = study.user_attrs.get(fer_study.ATTR_LABELS)
    log(f"final model: the top rung's best trial, not refitted; next: fer-opt evaluate --model {model_path} "
        f"--data {study.user_attrs[fer_study.ATTR_DATA]}{f' --labels {labels}' if labels else ''} --split val")
    return model_path
