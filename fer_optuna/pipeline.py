"""Whole jobs: a resumable fit of one config (`fer-opt train`), and the main job (`fer-opt run`):
create the study, run workers, export the best config, fit it on all the data.

On a machine with GPUs the main job runs the full fer2013-cnn3 study with workers on
every GPU; on a CPU-only machine it runs studies/quick.yaml, which searches on a proxy
and then fits the best configuration on all the data (its final: section).
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
from .search import study as fer_study
from .search import worker as fer_worker
from .search.storage import mask_url, open_storage, storage_url
from .training import checkpoints, trainer
from .training import data as fer_data
from .training.config import TrainConfig, load_config

STUDIES = Path(__file__).resolve().parent.parent / "studies"


def fit(cfg: TrainConfig, data: fer_data.FerData, out: Path, device: torch.device, log: Callable[[str], None] = print,
        what: str = "training") -> trainer.TrainResult:
    """Train `cfg` into `out`, resumably: the run's state is saved beside `out` after every epoch
    (model.pt -> model.state.pt), and the same command after Ctrl-C, SIGTERM or a crash resumes
    after the last finished epoch and ends with the same weights as a run never stopped."""
    out = Path(out)
    state = checkpoints.state_path(out)
    if out.exists() and not state.exists():
        log(f"{out} exists: this run replaces it with its best epoch")
    with interrupts.first_signal_raises() as received:
        try:
            result = trainer.train(cfg, data, device=device, checkpoint=out, state=state, log=log)
        except KeyboardInterrupt:
            signum = interrupts.first_signal(received)
            done = len(checkpoints.saved_history(state))
            raise interrupts.Interrupted(signum, f"{what} stopped by {signum.name} after epoch {done} of {cfg.epochs}; "
                                         "run the same command again to resume") from None
    state.unlink(missing_ok=True)  # the run is whole: a rerun starts afresh
    return result


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


def run(data_path: str, storage: str | None, spec_path: str | None, out_dir: Path, gpu: str, port: int,
        checkpoint_dir: str, log=print) -> Path:
    devices = fer_worker.parse_devices(gpu)
    spec_path = spec_path or str(STUDIES / ("quick.yaml" if devices == ["cpu"] else "fer2013-cnn3.yaml"))
    url = storage_url(storage)
    created, new = fer_study.create(spec_path, url, data=data_path, skip_if_exists=True)
    name = created.study_name
    log(f"study {name} {'created' if new else 'resumed'} on {mask_url(url)} from {spec_path}")
    dashboard = _dashboard(url, port, out_dir / "dashboard.log", log)
    try:
        # One worker is repeatable (seed offset 0); several draw different startup trials.
        opts = fer_worker.WorkerOptions(name, url, devices[0], data_path, checkpoint_dir=checkpoint_dir, seed_offset=0)
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
    found, spec = fer_study.load_study(name, open_storage(url))
    log(fer_study.format_status(fer_study.status(found, spec), url))
    out_dir.mkdir(parents=True, exist_ok=True)
    [best_yaml] = fer_study.export(found, spec, out_dir / "best.yaml", 1, url)
    model_path = out_dir / "best.pt"
    cfg = load_config(best_yaml)
    log(f"training the final model from {best_yaml} ({cfg.model}, {cfg.epochs} epochs, "
        f"{'all' if not cfg.train_subset else cfg.train_subset} train images) -> {model_path}")
    result = fit(cfg, fer_data.load(data_path), model_path, trainer.resolve_device(devices[0]), log, "final fit")
    log(f"final model: val (PublicTest) accuracy {result.best_val_acc:.4f}; saved {model_path}")
    log(f"next: fer-opt evaluate --model {model_path} --data {data_path} --split val")
    return model_path
