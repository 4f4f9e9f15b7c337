"""Workers: processes that pull trials from a study until its budget is spent.

A worker loads the data once, then runs one trial at a time under
`study.optimize` (so Optuna's heartbeat runs, and a killed worker's trial is
failed and re-queued by whichever worker notices first). The study's trial
budget counts COMPLETE and PRUNED trials across all workers and is never
exceeded: a trial that starts beyond it is dropped as failed with that reason.
In a study with rungs, a worker that finds a rung drained goes on to the next
(search/rungs.py), promoting to it if it is the first to get there.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import socket
import subprocess
import tempfile
import sys
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import optuna
import torch
from optuna.trial import TrialState

from fer_optuna import interrupts
from fer_optuna.errors import FerOptError
from fer_optuna.options import Settings
from fer_optuna.training import data as fer_data
from fer_optuna.training import costs as fer_costs
from fer_optuna.training import trainer
from fer_optuna.training.config import TrainConfig
from . import artifacts, pruners, rungs
from .budget import ATTR_INFEASIBLE, violations
from .optuna_private import OPTIMIZE_LOGGER, TellingAFinishedTrial
from .storage import open_storage, storage_url
from .study import ATTR_DATA, FINISHED, StudySpec, load_data, load_study, make_pruner, make_sampler, suggest
from .trial_files import TrialFiles

WAIT_SECONDS = 2.0


class TrialDropped(FerOptError):
    """A trial that cannot or must not run; it is recorded as failed and the worker goes on."""


class _DropsOnOneLine(logging.Filter):
    """Optuna logs a failed trial with its traceback; for a dropped one the reason is the whole story."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], TrialDropped):
            record.exc_info = None
        return True


@dataclass(frozen=True, kw_only=True)  # by name only: a reordered field cannot swap two values
class WorkerOptions:
    study: str
    storage: str | None
    device: str  # 'cpu', 'cuda', 'cuda:N' or a GPU index
    data: str | None = None
    labels: str | None = None  # FER+ votes for the data [default: those stored with the study]
    n_trials: int | None = None
    timeout: float | None = None
    checkpoint_dir: str | None = None  # this host's copy of each trial's files
    artifacts: str | None = None  # the artifact store, if not the one the study records
    wandb: bool = False
    threads: int | None = None
    # Added to the sampler's seed. None: this process's id, so that workers started by hand
    # draw different startup trials; the main job's single worker uses 0 and is repeatable.
    seed_offset: int | None = None
    settings: Settings = field(default_factory=Settings)  # the environment's, read by the caller (Settings.from_env)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _count(study: optuna.Study, states: tuple[TrialState, ...]) -> int:
    return len(study.get_trials(deepcopy=False, states=states))


class Objective:
    """One trial, as Optuna's `study.optimize` calls it: budget guard, parameters, training, pruning, failures.

    `running` is the number of the trial in progress, so that an interrupted worker can
    queue it again for another. `taken_over` is set when another worker failed this one's
    trial as stale (this worker lost the database for longer than the grace period) and
    re-queued it: its retry carries on from the last saved epoch, so this worker drops it.
    """

    def __init__(self, study: optuna.Study, spec: StudySpec, data: fer_data.FerData, device: torch.device,
                 opts: WorkerOptions, log: Callable[[str], None], rung: int = 0):
        self.study, self.spec, self.data, self.device, self.opts, self.log = study, spec, data, device, opts, log
        self.rung = rung
        self.store = artifacts.study_store(study, opts.artifacts, opts.settings.stores)
        self.running: int | None = None
        self.store_failed: int | None = None  # a trial the store failed: the worker queues it again
        self.taken_over: int | None = None

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        self.running = trial.number
        try:
            return self._run(trial)
        except optuna.exceptions.UpdateFinishedTrialError:
            self.taken_over = trial.number
            raise TrialDropped(f"trial {trial.number} was failed as stale by another worker") from None

    def _run(self, trial: optuna.Trial) -> float | list[float]:
        self._check_budget(trial)
        params = suggest(trial, self.spec.space)
        cfg = self.spec.train.replace(**params)
        trial.set_user_attr("worker", worker_id())
        trial.set_user_attr("device", str(self.device))
        costs = self._costs(trial, cfg)
        if trial.user_attrs.get(ATTR_INFEASIBLE):  # not worth training: it cannot be deployed
            self.log(f"trial {trial.number} breaks a constraint, not trained: {trial.user_attrs[ATTR_INFEASIBLE]}")
            return self._values(0.0, costs)
        try:
            files = self._files(trial)
        except artifacts.StoreUnavailable as e:
            self.store_failed = trial.number
            raise self._drop(trial, str(e)) from None
        tracker = None
        if self.opts.wandb:
            from .tracking import TrialTracker

            tracker = TrialTracker(self.study.study_name, trial.number, params)
        self.log(f"trial {trial.number} started: {params}")
        outcome = "failed"
        if self.device.type == "cuda":
            torch.empty(0, device=self.device)  # the peak counters of a device not yet used do not exist yet
            torch.cuda.reset_peak_memory_stats(self.device)
        try:
            reporter = EpochReporter(trial, cfg, tracker, files, self.log)
            result = trainer.train(cfg, self.data, device=self.device, on_epoch=reporter,
                                   checkpoint=files and files.checkpoint, state=files and files.state, progress=False,
                                   log=self.log, settings=self.opts.settings)
            outcome = "complete"
            if tracker:
                tracker.summary(result.best_val_acc, result.n_params)
        except optuna.TrialPruned as e:
            outcome = "pruned"
            self.log(f"trial {trial.number} pruned: {e}")
            raise
        except torch.OutOfMemoryError:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            raise self._drop(trial, f"out of memory at batch_size {cfg.batch_size} on {self.device}") from None
        except trainer.NonFiniteLoss as e:
            raise self._drop(trial, str(e)) from None
        except artifacts.StoreUnavailable as e:
            self.store_failed = trial.number
            raise self._drop(trial, str(e)) from None
        finally:
            if tracker:
                tracker.finish(outcome)
            if files is not None and outcome != "failed":
                self._finish(files)
            _record_peak_memory(trial, self.device)
        trial.set_user_attr("n_params", result.n_params)
        trial.set_user_attr("best_epoch", result.best_epoch)
        self.log(f"trial {trial.number} complete: val accuracy {result.best_val_acc:.4f} in {result.epochs_run} epochs")
        return self._values(result.best_val_acc, costs)

    def _costs(self, trial: optuna.Trial, cfg: TrainConfig) -> dict[str, float]:
        """The model's deployment costs, recorded before it trains, and its constraints as Optuna keeps them.

        An architecture is measured once per study: a trial that shares it with an earlier one takes
        that one's figures, so that latency noise cannot rank two equal models, nor hosts with other
        CPUs rank one architecture twice."""
        n_classes = len(self.data.classes)  # the head of the model that trains
        key = fer_costs.architecture(cfg, n_classes)
        earlier = next((t for t in self.study.get_trials(deepcopy=False)
                        if t.user_attrs.get("architecture") == key and "latency_ms" in t.user_attrs), None)
        if earlier is not None:
            costs = {name: earlier.user_attrs[name] for name in fer_costs.MEASURES}
            trial.set_user_attr("costs_from_trial", earlier.number)
        else:
            costs = fer_costs.measure(cfg, n_classes)
            trial.set_user_attr("costs_host", socket.gethostname())
        trial.set_user_attr("architecture", key)
        for name, value in costs.items():
            trial.set_user_attr(name, value)
        over = violations(self.spec.constraints, costs)
        for name, amount in over.items():
            trial.set_constraint(name, amount)
        broken = [f"{name} {costs[name]:g} " + (f"> max {high:g}" if high is not None and costs[name] > high else f"< min {low:g}")
                  for name, low, high in self.spec.constraints if over[name] > 0]
        if broken:
            trial.set_user_attr(ATTR_INFEASIBLE, "; ".join(broken))
        return costs

    def _values(self, val_accuracy: float, costs: dict[str, float]) -> float | list[float]:
        """What Optuna records: val accuracy, then the costs a multi-objective study minimises."""
        if not self.spec.multi_objective:
            return val_accuracy
        return [val_accuracy] + [costs[name] for name in self.spec.objectives[1:]]

    def _check_budget(self, trial: optuna.Trial) -> None:
        """A trial that starts when the budget is already taken by trials ahead of it is dropped, not run;
        above rung 0, so is one that is no promoted configuration or a second copy of one."""
        refused = rungs.refusal(self.study, trial, self.rung)
        if refused:
            raise self._drop(trial, refused)
        ahead = [t for t in self.study.get_trials(deepcopy=False, states=FINISHED + (TrialState.RUNNING,))
                 if t.number < trial.number]
        if len(ahead) >= self.spec.n_trials:
            self.study.stop()
            raise self._drop(trial, f"study budget of {self.spec.n_trials} trials already taken by other workers")

    def _drop(self, trial: optuna.Trial, reason: str) -> TrialDropped:
        trial.set_user_attr("fail_reason", reason)
        return TrialDropped(reason)

    def _files(self, trial: optuna.Trial) -> TrialFiles | None:
        """The trial's best checkpoint and per-epoch state, taken over from a killed attempt if there is one."""
        if not self.opts.checkpoint_dir and self.store is None:
            return None
        folder = Path(self.opts.checkpoint_dir or tempfile.mkdtemp(prefix="fer-optuna-")) / self.study.study_name
        files = TrialFiles(trial, folder, self.store)
        files.take_over(self.study)
        return files

    def _finish(self, files: TrialFiles) -> None:
        """A finished trial's value stands even when its files cannot reach the store: the reason is recorded."""
        try:
            files.finish(self.data, self.device)
        except FerOptError as e:
            files.trial.set_user_attr("artifact_error", str(e))
            self.log(f"trial {files.trial.number}: its files did not reach the artifact store: {e}")


class EpochReporter:
    """Called after each epoch of a trial: sends its files to the store, reports to Optuna, records progress, prunes.
    A multi-objective trial reports and prunes through `pruners`, since Optuna's own calls refuse it."""

    def __init__(self, trial: optuna.Trial, cfg, tracker, files: TrialFiles | None, log: Callable[[str], None]):
        self.trial, self.cfg, self.tracker, self.files, self.log = trial, cfg, tracker, files, log
        self.started = time.perf_counter()
        self.first_epoch: int | None = None

    def __call__(self, stats: trainer.EpochStats) -> None:
        trial = self.trial
        if self.first_epoch is None:
            self.first_epoch = stats.epoch
            if stats.epoch > 1:  # this attempt resumed an earlier one's run
                trial.set_user_attr("resumed_at_epoch", stats.epoch - 1)
        if self.files is not None:
            self.files.after_epoch(stats)
        self.log(f"trial {trial.number} epoch {stats.epoch}/{self.cfg.epochs}: val accuracy {stats.val_acc:.4f} "
                 f"({stats.seconds:.0f}s)")
        pruners.report(trial, stats.val_acc, stats.epoch)
        trial.set_user_attr("epochs_run", stats.epoch)
        trial.set_user_attr("seconds", round(time.perf_counter() - self.started, 2))
        if self.tracker:
            self.tracker.log_epoch(stats)
        # Never at the trial's last epoch: stopping it then saves nothing, and its result would be lost.
        if stats.epoch < self.cfg.epochs and pruners.should_prune(trial) and not rungs.is_baseline(trial):
            raise optuna.TrialPruned(f"val accuracy {stats.val_acc:.4f} at epoch {stats.epoch}: pruned by "
                                     f"{type(trial.study.pruner).__name__}")


def _requeue(study: optuna.Study, storage: optuna.storages.BaseStorage, number: int | None) -> str:
    """Queue a trial that this worker was stopped in for another attempt, as a stale one would be:
    same parameters, up to the retry limit, resumed from its last saved epoch."""
    if number is None:
        return "no trial was running"
    trial = study.get_trials(deepcopy=False)[number]
    if trial.state != TrialState.FAIL:
        return f"trial {number} had already finished"
    retry = storage.get_heartbeat_stale_trial_callback()
    retry(study, trial)
    return f"trial {number} was re-queued for another worker"


def _record_peak_memory(trial: optuna.Trial, device: torch.device) -> None:
    """Peak host RSS of this worker so far and the trial's peak GPU memory: how many workers fit."""
    trial.set_user_attr("host_peak_mb", round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
    if device.type == "cuda":
        trial.set_user_attr("gpu_peak_mb", round(torch.cuda.max_memory_allocated(device) / 2**20))


def _pull(study: optuna.Study, spec: StudySpec, storage, objective: Objective, opts: WorkerOptions, rung: int, top: bool,
          ran: int, deadline: float | None, log: Callable[[str], None]) -> tuple[int, bool]:
    """Run a rung's trials; returns how many trials this worker has run so far, and whether the rung is
    drained (else this worker's --n-trials or --timeout stopped it)."""
    while opts.n_trials is None or ran < opts.n_trials:
        if deadline and time.monotonic() >= deadline:
            log("timeout reached")
            return ran, False
        finished = _count(study, FINISHED)
        if rungs.drained(study, spec, rung, top):
            log(f"budget reached: {finished} trials finished" if rung == 0 else
                f"rung {rung} drained: {finished} of {spec.n_trials} promoted trials finished")
            return ran, True
        if rung or finished + _count(study, (TrialState.RUNNING,)) >= spec.n_trials:
            # The last trials are running elsewhere; wait, in case one dies and is re-queued.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
            if _count(study, (TrialState.WAITING,)) == 0:
                time.sleep(WAIT_SECONDS)
                continue
        try:
            study.optimize(objective, n_trials=1, catch=(TrialDropped,))
        except TellingAFinishedTrial:  # the trial another worker failed as stale
            if objective.taken_over is None:
                raise
            log(f"trial {objective.taken_over} was failed as stale by another worker while this one could "
                "not reach the database; its retry carries on from the last saved epoch")
            objective.taken_over = None
        ran += 1
        if objective.store_failed is not None:  # the store, not the trial, failed: another attempt
            log(_requeue(study, storage, objective.store_failed))
            objective.store_failed = None
    return ran, False


def run(opts: WorkerOptions) -> int:
    """Pull trials until the budget, --n-trials or --timeout; returns how many trials this worker ran."""
    prefix = f"[worker {worker_id()} {opts.device}]"

    def log(msg: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {prefix} {msg}", flush=True)

    if opts.threads:
        torch.set_num_threads(opts.threads)
    device = trainer.resolve_device(opts.device)
    storage = open_storage(opts.storage, heartbeat=True, options=opts.settings.stores)
    study, spec = load_study(opts.study, storage)
    root, root_spec = study, spec
    seed_offset = os.getpid() if opts.seed_offset is None else opts.seed_offset
    study.sampler = make_sampler(spec, seed_offset=seed_offset)
    study.pruner = make_pruner(spec)
    data_path = opts.data or study.user_attrs.get(ATTR_DATA)
    data = load_data(study, opts.data, opts.labels, opts.settings.data)
    objective = Objective(study, spec, data, device, opts, log)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger(OPTIMIZE_LOGGER).addFilter(_DropsOnOneLine())
    deadline = time.monotonic() + opts.timeout if opts.timeout else None
    ran = 0
    where = (f"in {objective.store.url}" if objective.store else
             f"in {opts.checkpoint_dir} on this host" if opts.checkpoint_dir else "not kept")
    log(f"study {spec.name}: budget {spec.n_trials} trials, data {data_path}, trial files {where}")
    announce = lambda name: log(f"{name}: stopping; the running trial goes back to the queue (again to force)")  # noqa: E731
    with interrupts.first_signal_raises(announce) as received:
        try:
            for rung in range(rungs.count(root_spec)):  # without rungs, one: the study itself
                if rung:  # rung-1 is drained: promote once (or wait for the worker that does), then run this one
                    study, spec = rungs.open_rung(root, root_spec, rung, 3 * opts.settings.stores.heartbeat_seconds, log)
                    study.sampler, study.pruner = make_sampler(spec, seed_offset=seed_offset), make_pruner(spec)
                    objective = Objective(study, spec, data, device, opts, log, rung)
                if root_spec.rungs:  # the count its accuracies' standard errors are taken on
                    study.set_user_attr(rungs.ATTR_VAL_IMAGES, rungs.val_images(data, spec.train))
                ran, drained = _pull(study, spec, storage, objective, opts, rung, rung == rungs.count(root_spec) - 1,
                                     ran, deadline, log)
                if not drained:  # this worker's --n-trials or --timeout
                    break
        except KeyboardInterrupt:
            signum = interrupts.first_signal(received)
            outcome = _requeue(objective.study, storage, objective.running)
            log(f"interrupted: {outcome}; exiting")
            raise interrupts.Interrupted(signum, f"worker stopped by {signum.name}; {outcome}") from None
    return ran


def spawn(opts: WorkerOptions, devices: list[str], per_device: int) -> int:
    """Start per_device worker processes on each device; forward signals; exit status of the worst."""
    cpu_workers = per_device * sum(d == "cpu" for d in devices)
    threads = max(1, (os.cpu_count() or 1) // cpu_workers) if cpu_workers else None
    procs: list[subprocess.Popen] = []
    for device in devices:
        for _ in range(per_device):
            cmd = [sys.executable, "-m", "fer_optuna.cli", "worker", "--study", opts.study, "--gpu", device]
            for flag, value in (("--data", opts.data), ("--labels", opts.labels), ("--n-trials", opts.n_trials), ("--artifacts", opts.artifacts),
                                ("--timeout", opts.timeout), ("--checkpoint-dir", opts.checkpoint_dir),
                                ("--threads", threads if device == "cpu" else None)):
                if value is not None:
                    cmd += [flag, str(value)]
            if opts.wandb:
                cmd.append("--wandb")
            # The storage URL goes by environment: on a command line, its password would show in `ps`.
            env = {**os.environ, "FER_OPT_STORAGE": storage_url(opts.storage)}
            procs.append(subprocess.Popen(cmd, env=env))

    def forward(signum, frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    return max(p.wait() for p in procs)


def launch(opts: WorkerOptions, devices: list[str], per_device: int) -> int:
    """The one way to start workers: in this process, or per_device processes on each device.
    Returns the exit status (the worst of the processes')."""
    if len(devices) * per_device > 1:
        return spawn(opts, devices, per_device)
    run(replace(opts, device=devices[0]))
    return 0


def parse_devices(gpu: str) -> list[str]:
    """'cpu', '0', '0,1' or 'all' -> device specs."""
    if gpu == "cpu":
        return ["cpu"]
    if gpu == "all":
        n = torch.cuda.device_count()
        return [str(i) for i in range(n)] if n else ["cpu"]
    parts = [p.strip() for p in gpu.split(",")]
    if not all(p.isdigit() for p in parts):
        raise FerOptError(f"devices {gpu!r}: expected cpu, all, a GPU index or a list like 0,1", flag="--gpu")
    return parts


def auto_per_device(devices: list[str], cores: int | None = None) -> int:
    """Workers per device for --per-gpu auto.

    A CPU worker already uses every core. A GPU is kept waiting by the host launching a
    small model's kernels (cnn3 on an H200: about 1 ms of GPU work in a 4.3 ms step), so
    several trials share it well: fer2013-cnn3.yaml ran 236 / 367 / 478 trials an hour with
    1 / 2 / 4 workers on one H200, each under 2.5 GB (benchmarks/study.py). Each worker keeps
    one core busy launching, so there are never more workers than cores.
    """
    if devices == ["cpu"]:
        return 1
    cores = cores or os.cpu_count() or 1
    return max(1, min(4, cores // len(devices)))

