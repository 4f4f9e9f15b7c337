"""Every use of Optuna's private parts, in one place; the rest of the package uses its public API.

Each use says why it is needed, and tests/test_optuna_private.py has a test named after it that
fails when the Optuna behaviour it relies on changes, so that an Optuna upgrade breaks a test
rather than a study.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import optuna
import sqlalchemy.exc
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

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
    which hold the logic: retry while the database is away, create each trial once.

    Below them, two of Optuna's writes done as Optuna does them, with a token written in the same
    transaction, which the subclass's retry reads to learn whether its own earlier try committed."""

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
        return [self.without_tokens(t) for t in self.retried(functools.partial(super()._get_trials, *args, **kwargs))]

    def _set_trial_param(self, *args, **kwargs) -> Any:
        return self.retried(functools.partial(super()._set_trial_param, *args, **kwargs))

    def _get_best_trial_id(self, *args, **kwargs) -> int:
        return self.retried(functools.partial(super()._get_best_trial_id, *args, **kwargs))

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return self.confirmed_stale(functools.partial(self.retried, functools.partial(super()._get_stale_trial_ids, study_id)))

    def _set_trial_state_values_with_token(self, trial_id: int, state: TrialState, values: Sequence[float] | None,
                                           token: str) -> bool:
        """RDBStorage.set_trial_state_values, step for step (the trial's row locked, finished trials refused,
        a claim only of a WAITING trial), and where it sets the state, the trial system attribute
        STATE_TOKEN = token in the same transaction: the token is there if and only if this write was made."""
        try:
            with _create_scoped_session(self.scoped_session) as session:
                trial = models.TrialModel.find_or_raise_by_id(trial_id, session, for_update=True)
                self.check_trial_is_updatable(trial_id, trial.state)
                if values is not None:
                    for objective, v in enumerate(values):
                        self._set_trial_value_without_commit(session, trial, objective, v)
                if state == TrialState.RUNNING and trial.state != TrialState.WAITING:
                    return False
                # Before the state changes: this refuses a finished trial, as the check above did.
                self._set_trial_attr_without_commit(session, models.TrialSystemAttributeModel, trial_id,
                                                    self.STATE_TOKEN, token)
                trial.state = state
                if state == TrialState.RUNNING:
                    trial.datetime_start = datetime.now()
                if state.is_finished():
                    trial.datetime_complete = datetime.now()
        except sqlalchemy.exc.IntegrityError:
            return False
        return True

    def _create_new_study_with_token(self, directions: Sequence[StudyDirection], study_name: str | None,
                                     token: str) -> int:
        """RDBStorage.create_new_study (a unique name when none is given; a name taken is a
        DuplicatedStudyError), with the study system attribute CREATE_TOKEN = token in the same transaction."""
        try:
            with _create_scoped_session(self.scoped_session) as session:
                if study_name is None:
                    study_name = self._create_unique_study_name(session)
                session.add(models.StudyModel(
                    study_name=study_name,
                    directions=[models.StudyDirectionModel(objective=objective, direction=d)
                                for objective, d in enumerate(directions)],
                    system_attributes=[models.StudySystemAttributeModel(key=self.CREATE_TOKEN, value_json=json.dumps(token))]))
        except sqlalchemy.exc.IntegrityError:
            raise optuna.exceptions.DuplicatedStudyError from None
        return self.get_study_id_from_name(study_name)
