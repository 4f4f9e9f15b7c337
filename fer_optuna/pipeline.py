"""The main job in one call: create the study, run workers, export the best config, train it.

On a machine with GPUs it runs the full fer2013-cnn3 study with workers on every
GPU; on a CPU-only machine it runs studies/quick.yaml, which searches on a proxy and then
fits the best configuration on all the data (its final: section), in about 24 minutes on
two AVX2 cores.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from . import data as fer_data
from . import study as fer_study
from . import trainer
from . import worker as fer_worker
from .config import load_config

STUDIES = Path(__file__).resolve().parent.parent / "studies"


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def run(data_path: str, storage: str | None, spec_path: str | None, out_dir: Path, gpu: str, port: int,
        checkpoint_dir: str, log=print) -> Path:
    devices = fer_worker.parse_devices(gpu)
    spec_path = spec_path or str(STUDIES / ("quick.yaml" if devices == ["cpu"] else "fer2013-cnn3.yaml"))
    url = fer_study.storage_url(storage)
    created, new = fer_study.create(spec_path, url, data=data_path, skip_if_exists=True)
    name = created.study_name
    log(f"study {name} {'created' if new else 'resumed'} on {fer_study.mask_url(url)} from {spec_path}")
    dashboard = None
    if port and _port_free(port):
        dashboard = subprocess.Popen([sys.executable, "-m", "fer_optuna.cli", "dashboard", "--port", str(port)],
                                     env={**os.environ, "FER_OPT_STORAGE": url},  # not in argv: `ps` shows argv
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        log(f"dashboard: http://127.0.0.1:{port}/dashboard/ (while the study runs; later: fer-opt dashboard)")
    elif port:
        log(f"port {port} is busy: not starting a dashboard (fer-opt dashboard --port N starts one)")
    try:
        opts = fer_worker.WorkerOptions(name, url, devices[0], data_path, checkpoint_dir=checkpoint_dir)
        per = fer_worker.auto_per_device(devices)
        log(f"workers: {per} per device on {', '.join(devices)}")
        if len(devices) * per > 1:
            fer_worker.spawn(opts, devices, per)
        else:
            fer_worker.run(replace(opts, seed_offset=0))
    finally:
        if dashboard is not None:
            dashboard.terminate()
    found, spec = fer_study.load_study(name, fer_study.open_storage(url))
    log(fer_study.format_status(fer_study.status(found, spec), url))
    out_dir.mkdir(parents=True, exist_ok=True)
    [best_yaml] = fer_study.export(found, spec, out_dir / "best.yaml", 1, url)
    model_path = out_dir / "best.pt"
    cfg = load_config(best_yaml)
    log(f"training the final model from {best_yaml} ({cfg.model}, {cfg.epochs} epochs, "
        f"{'all' if not cfg.train_subset else cfg.train_subset} train images) -> {model_path}")
    device = trainer.resolve_device(devices[0])
    result = trainer.train(cfg, fer_data.load(data_path), device=device, checkpoint=model_path, log=log)
    log(f"final model: val (PublicTest) accuracy {result.best_val_acc:.4f}; saved {model_path}")
    log(f"next: fer-opt evaluate --model {model_path} --data {data_path} --split val")
    return model_path
