"""Pruning a multi-objective study, which Optuna refuses (its `trial.report` and `should_prune` raise there).

Here only accuracy evolves during training: every cost a study trades it for (latency, parameters,
MACs, size) follows from the architecture and is measured before the first epoch. So a trial can
be judged at epoch k against the trials that cost no more than it on every cost: if it is below
their median accuracy at epoch k, cheaper models already do better, and it is unlikely to end on
the front. That is `pareto-median`; docs/deployment.md says why this rule, measured against another.

Also here: the per-epoch reports such a trial records, so that the dashboard plots them and a
retry inherits them, and the TPE sampler's view of a pruned multi-objective trial.
"""

from __future__ import annotations

import copy
import math
import statistics
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from fer_optuna.errors import FerOptError
from fer_optuna.training.costs import MEASURES
from . import optuna_private

# The costs that exist before a trial trains, so that a pruner can compare trials by them at epoch 1.
# Every measure of training.costs follows from the architecture alone; a measure taken from
# training (say, energy per epoch) would not be one of these.
KNOWN_BEFORE_TRAINING = frozenset(MEASURES)
MULTI_OBJECTIVE_PRUNERS = ("pareto-median", "none")


class ParetoMedianPruner(optuna.pruners.BasePruner):
    """Prune a trial whose best val accuracy so far is below the median, at the same epoch, of the complete
    trials that cost no more than it on every one of `costs`; never with fewer than n_startup_trials of them,
    and never at the last of its `epochs`: that saves nothing, and a pruned trial has no place on the front.

    With `among="all"`, every complete trial is compared whatever its costs: the plain median rule, kept
    as the alternative the benchmark measures (docs/deployment.md)."""

    def __init__(self, costs: tuple[str, ...], epochs: int, n_startup_trials: int = 5, n_warmup_steps: int = 0,
                 among: str = "cheaper"):
        if n_startup_trials < 1 or n_warmup_steps < 0 or among not in ("cheaper", "all"):
            raise ValueError("n_startup_trials must be >= 1, n_warmup_steps >= 0, among cheaper or all")
        self.costs, self.epochs, self.among = costs, epochs, among
        self.n_startup_trials, self.n_warmup_steps = n_startup_trials, n_warmup_steps

    def peers(self, study: optuna.Study, trial: FrozenTrial, step: int) -> list[FrozenTrial]:
        """The complete trials that reached `step` and cost no more than `trial` on every cost."""
        mine = {name: trial.user_attrs[name] for name in self.costs}
        return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if step in t.intermediate_values and t.number != trial.number
                and (self.among == "all" or all(t.user_attrs.get(n, math.inf) <= v for n, v in mine.items()))]

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step < self.n_warmup_steps or step >= self.epochs:
            return False
        peers = self.peers(study, trial, step)
        if len(peers) < self.n_startup_trials:
            return False
        best_so_far = max(trial.intermediate_values.values())
        return best_so_far < statistics.median(t.intermediate_values[step] for t in peers)


def check(where: str, pruner: dict, objectives: tuple[str, ...]) -> None:
    """A pruner that a study with these objectives can run, or one line saying what to change."""
    kind, costs = pruner["type"], objectives[1:]
    if kind == "pareto-median" and not costs:
        raise FerOptError(f"{where}: pruner: pareto-median compares trials by cost objectives; add objectives: "
                          "(e.g. [val_accuracy: maximize, latency_ms: minimize]) or use type: median")
    if costs and kind not in MULTI_OBJECTIVE_PRUNERS:
        raise FerOptError(f"{where}: pruner: {kind} cannot prune a multi-objective study; use type: pareto-median "
                          "(the median rule among trials that cost no more) or type: none")
    late = [name for name in costs if name not in KNOWN_BEFORE_TRAINING]
    if kind == "pareto-median" and late:
        raise FerOptError(f"{where}: pruner: pareto-median needs every cost known before training, and "
                          f"{', '.join(late)} is not; drop the pruner (type: none) or that objective")


# --------------------------------------------------------------------------- the trial's side


def report(trial: optuna.Trial, value: float, step: int) -> None:
    """`trial.report`, also in a multi-objective study: the value is recorded the same way, so that the
    dashboard plots it, `status` shows it, and a retry inherits it."""
    if len(trial.study.directions) == 1:
        trial.report(value, step)
    else:
        optuna_private.record_intermediate_value(trial, step, value)


def should_prune(trial: optuna.Trial) -> bool:
    """`trial.should_prune`, also in a multi-objective study."""
    if len(trial.study.directions) == 1:
        return trial.should_prune()
    return trial.study.pruner.prune(trial.study, optuna_private.latest(trial))


# --------------------------------------------------------------------------- what the samplers see


class _PrunedWithoutReports:
    """A multi-objective study as TPE reads it: pruned trials without their per-epoch values.

    TPE ranks pruned trials by their last report through `study.direction`, which a multi-objective
    study does not have: with one reported value, Optuna's TPE raises. Without reports, pruned trials
    rank after the complete ones (TPE's 'above' group, the configurations to avoid), as trials that
    cheaper ones beat should."""

    def __init__(self, study: optuna.Study):
        self._study = study

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(self, *args, **kwargs) -> list[FrozenTrial]:  # optuna_private.TPE_READS_TRIALS
        return [_without_reports(t) if t.state == TrialState.PRUNED else t
                for t in getattr(self._study, optuna_private.TPE_READS_TRIALS)(*args, **kwargs)]


def _without_reports(trial: FrozenTrial) -> FrozenTrial:
    bare = copy.copy(trial)
    bare.intermediate_values = {}
    return bare


class MultiObjectiveTPESampler(optuna.samplers.TPESampler):
    """Optuna's TPE, able to read a multi-objective study that has pruned trials."""

    def sample_relative(self, study, trial, search_space):
        return super().sample_relative(_PrunedWithoutReports(study), trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return super().sample_independent(_PrunedWithoutReports(study), trial, param_name, param_distribution)


# --------------------------------------------------------------------------- what pruning saved


def _epochs(trial: FrozenTrial) -> int:
    return max(trial.intermediate_values, default=0)


def planned_epochs(trial: FrozenTrial, epochs: int) -> int:
    """The epochs a trial was to run: its own, where the study searches `epochs`, else the study's."""
    return int(trial.params.get("epochs", epochs))


def savings(study: optuna.Study, pruner: str, epochs: int) -> dict[str, Any]:
    """How many finished trials the pruner stopped, and the epochs that spared (see planned_epochs)."""
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    pruned = [t for t in finished if t.state == TrialState.PRUNED]
    return {"pruner": pruner, "trials": len(finished), "pruned": len(pruned),
            "epochs_run": sum(_epochs(t) for t in finished),
            "epochs_saved": sum(planned_epochs(t, epochs) - _epochs(t) for t in pruned)}


def format_savings(s: dict[str, Any]) -> str:
    total = s["epochs_run"] + s["epochs_saved"]
    share = f" ({s['epochs_saved'] / total:.0%})" if total else ""
    return (f"pruner {s['pruner']}: stopped {s['pruned']} of {s['trials']} trials early; {s['epochs_run']} epochs run, "
            f"{s['epochs_saved']} saved{share}")
