"""Every use of Optuna's private parts, in one place; the rest of the package uses its public API.

Each use says why it is needed, and tests/test_optuna_private.py has a test named after it that
fails when the Optuna behaviour it relies on changes, so that an Optuna upgrade breaks a test
rather than a study.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import optuna
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial

# Optuna logs a trial that failed under `study.optimize(catch=...)` with its traceback on this
# logger (optuna/study/_optimize.py); a worker trims the traceback of a trial it dropped on purpose.
OPTIMIZE_LOGGER = "optuna.study._optimize"

# `study.optimize` raises a plain ValueError ("Cannot tell a FAIL trial", optuna/study/_tell.py)
# when the trial it ran was failed meanwhile by another worker; Optuna has no type of its own for it.
TellingAFinishedTrial = ValueError


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage a study was loaded from, where its rungs' studies live (search/rungs.py): Study keeps it private."""
    return study._storage


def study_system_attrs(study: optuna.Study) -> dict[str, Any]:
    """A study's system attributes (its study file, its artifact store): Study no longer has them
    (Optuna 5 removed Study.system_attrs), and the storage they are read from is private to it."""
    storage = storage_of(study)
    return storage.get_study_system_attrs(storage.get_study_id_from_name(study.study_name))


def record_intermediate_value(trial: optuna.Trial, step: int, value: float) -> None:
    """What `trial.report` writes, for a multi-objective trial, which `report` refuses: the storage
    call under it takes any trial, and the trial's id and storage are private to it."""
    trial.study._storage.set_trial_intermediate_value(trial._trial_id, step, value)


def latest(trial: optuna.Trial) -> FrozenTrial:
    """The running trial as stored now, as a pruner is given it (Optuna's own `should_prune` reads it so)."""
    return trial.study._storage.get_trial(trial._trial_id)


# TPE reads a study's trials through `study._get_trials` (optuna/samplers/_tpe/sampler.py); a view
# of the study that overrides this method is what TPE sees (search/pruners.py).
TPE_READS_TRIALS = "_get_trials"


class RDBStorageInternals(optuna.storages.RDBStorage):
    """The RDBStorage methods that Optuna's own layers call past the public storage API: its cache
    (optuna/storages/_cached_storage.py) creates trials, sets parameters and reads trials and the
    best trial through them, and fail_stale_trials (optuna/storages/_heartbeat.py) asks for stale
    trials. Each is sent through the subclass's hooks (fer_optuna.search.storage.RetryingRDBStorage),
    which hold the logic: retry while the database is away, create each trial once."""

    def _create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> FrozenTrial:
        return self.create_trial_once(study_id, template_trial, super()._create_new_trial)

    def _get_prepared_new_trial(self, study_id: int, template_trial: FrozenTrial | None, session) -> Any:
        """Inside the transaction that makes a trial (the study's row locked): a trial already made
        with this template's token is the one to return. Optuna itself retries a transaction whose
        commit failed, and so do we: a commit whose answer was lost would otherwise make a second trial."""
        token = (template_trial.system_attrs if template_trial else {}).get(self.CREATE_TOKEN)
        if token is not None:
            made = (session.query(models.TrialModel).join(models.TrialSystemAttributeModel)
                    .filter(models.TrialModel.study_id == study_id)
                    .filter(models.TrialSystemAttributeModel.key == self.CREATE_TOKEN)
                    .filter(models.TrialSystemAttributeModel.value_json == json.dumps(token)).one_or_none())
            if made is not None:
                return made
        return super()._get_prepared_new_trial(study_id, template_trial, session)

    def _get_trials(self, *args, **kwargs) -> list[FrozenTrial]:
        return [self.without_token(t) for t in self.retried(functools.partial(super()._get_trials, *args, **kwargs))]

    def _set_trial_param(self, *args, **kwargs) -> Any:
        return self.retried(functools.partial(super()._set_trial_param, *args, **kwargs))

    def _get_best_trial_id(self, *args, **kwargs) -> int:
        return self.retried(functools.partial(super()._get_best_trial_id, *args, **kwargs))

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return self.confirmed_stale(functools.partial(self.retried, functools.partial(super()._get_stale_trial_ids, study_id)))
