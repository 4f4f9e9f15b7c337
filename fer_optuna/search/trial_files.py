"""A trial's files: on this host's disk while it runs and, with the study's artifact store, in the store.

While a trial runs, its latest run state and best checkpoint are kept in the store under
ids of its own, replaced as epochs pass, so that a retry on any host resumes from them;
when it ends, its best checkpoint, a confusion matrix and a learning curve are uploaded as
Optuna artifacts, which optuna-dashboard lists and previews.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import optuna
import torch
from optuna.artifacts.exceptions import ArtifactNotFound

from fer_optuna.training import checkpoints, inference, metrics, trainer
from fer_optuna.training.data import FerData
from .artifacts import ArtifactStore


class TrialFiles:
    """A trial's best checkpoint and run state: on this host's disk while it runs and, with a store, in the store,
    replaced as epochs pass, so that a retry of the trial on any host goes on from its last epoch."""

    def __init__(self, trial: optuna.Trial, folder: Path, store: ArtifactStore | None):
        self.trial, self.store = trial, store
        self.checkpoint = folder / f"trial-{trial.number}.pt"
        self.state = checkpoints.state_path(self.checkpoint)
        self.best_val_acc = -1.0
        trial.set_user_attr("checkpoint", str(self.checkpoint))
        self.working: dict[str, str] = {}
        if store is not None:  # ids of their own, overwritten epoch after epoch: they never pile up
            self.working = {"state_artifact": uuid.uuid4().hex, "best_artifact": uuid.uuid4().hex}
            for key, value in self.working.items():
                trial.set_user_attr(key, value)
        self.inherited: list[str] = []  # a killed attempt's working files, removed once this one is done

    def take_over(self, study: optuna.Study) -> None:
        """A retry of a trial whose worker died goes on from that attempt's last epoch, from this disk or the store."""
        trials = study.get_trials(deepcopy=False)  # a study's trials are numbered from 0, in order
        for number in reversed(trials[self.trial.number].system_attrs.get("retry_history", [])):
            earlier = trials[number]
            local = self.checkpoint.with_name(f"trial-{number}.pt")
            found = checkpoints.state_path(local).exists()
            if found:  # this host ran it: its files are here
                shutil.copy(checkpoints.state_path(local), self.state)
                if local.exists():
                    shutil.copy(local, self.checkpoint)
            ids = {k: earlier.user_attrs.get(k) for k in ("state_artifact", "best_artifact")}
            if not found and self.store is not None and ids["state_artifact"]:
                try:
                    self.store.get(ids["state_artifact"], self.state)
                    if ids["best_artifact"]:
                        self.store.get(ids["best_artifact"], self.checkpoint)
                    found = True
                except ArtifactNotFound:
                    pass  # that attempt died before its first epoch was saved
            self.inherited += [i for i in ids.values() if i]
            if found:
                self.trial.set_user_attr("resumed_from_trial", number)
                return

    def after_epoch(self, stats: trainer.EpochStats) -> None:
        """The trainer has saved this epoch's state (and the checkpoint, if it improved): send them to the store."""
        improved = stats.val_acc > self.best_val_acc
        self.best_val_acc = max(self.best_val_acc, stats.val_acc)
        if self.store is None or not self.state.exists():
            return
        self.store.put(self.working["state_artifact"], self.state)
        if improved and self.checkpoint.exists():
            self.store.put(self.working["best_artifact"], self.checkpoint)

    def finish(self, data: FerData, device: torch.device) -> None:
        """The trial is over (complete or pruned): its checkpoint, confusion matrix and learning curve become
        artifacts the dashboard shows, and its working files go."""
        history = checkpoints.saved_history(self.state)
        self.state.unlink(missing_ok=True)  # only an interrupted trial needs its state
        if self.store is None or not self.checkpoint.exists():
            return
        number = self.trial.number
        acc, rep = inference.val_accuracy(self.checkpoint, data, device, as_trained=True)
        figures = {"confusion_matrix_artifact": self.checkpoint.with_suffix(".confusion.png"),
                   "learning_curve_artifact": self.checkpoint.with_suffix(".curve.png")}
        metrics.plot_confusion(rep, figures["confusion_matrix_artifact"], f"trial {number}: val accuracy {acc:.3f}")
        metrics.plot_learning_curve(history, figures["learning_curve_artifact"], f"trial {number}")
        ids = {"checkpoint_artifact": self.store.upload(self.checkpoint, self.trial, "application/octet-stream")}
        ids |= {key: self.store.upload(path, self.trial, "image/png") for key, path in figures.items()}
        for key, value in ids.items():
            self.trial.set_user_attr(key, value)
        for path in figures.values():
            path.unlink(missing_ok=True)
        for artifact_id in [*self.working.values(), *self.inherited]:
            try:
                self.store.remove(artifact_id)
            except ArtifactNotFound:
                pass
        for key in self.working:  # gone from the store: the attributes say so
            self.trial.set_user_attr(key, None)
