"""Each use of Optuna's private parts (fer_optuna/search/optuna_private.py) has a test here, named after
it, that fails when the Optuna behaviour it relies on changes: an upgrade breaks a test, not a study."""
import inspect
import json
import logging
import warnings

import optuna
import pytest
from optuna.storages._rdb import models

from fer_optuna.search import optuna_private
from fer_optuna.search.storage import open_storage


@pytest.fixture
def url(tmp_path):
    return f"sqlite:///{tmp_path}/private.db"


def _study(url, heartbeat=False):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(study_name="s", storage=open_storage(url, heartbeat=heartbeat), load_if_exists=True)


def _ask_and_finish(study):
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    study.tell(trial, 1.0)


@pytest.mark.parametrize("method, action", [
    ("_create_new_trial", _ask_and_finish),
    ("_set_trial_param", _ask_and_finish),
    ("_get_trials", lambda study: study.get_trials()),
    ("_get_best_trial_id", lambda study: (_ask_and_finish(study), study.best_trial)),
    ("_get_stale_trial_ids", lambda study: optuna.storages.fail_stale_trials(study)),
])
def test_optuna_calls_the_private_rdbstorage_method(method, action, url, monkeypatch):
    """RDBStorageInternals retries these (and makes trials once through _create_new_trial): Optuna must still call them."""
    calls = []
    original = getattr(optuna.storages.RDBStorage, method)

    def spy(self, *args, **kwargs):
        calls.append(method)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(optuna.storages.RDBStorage, method, spy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        action(_study(url, heartbeat=method == "_get_stale_trial_ids"))
    assert calls, f"Optuna no longer calls RDBStorage.{method}: what RDBStorageInternals does with it never runs"


def test_rdbstorage__get_prepared_new_trial_makes_the_trial_in_the_creating_transaction():
    params = list(inspect.signature(optuna.storages.RDBStorage._get_prepared_new_trial).parameters)
    assert params == ["self", "study_id", "template_trial", "session"]
    source = inspect.getsource(optuna.storages.RDBStorage._create_new_trial)
    assert "for_update=True" in source and "self._get_prepared_new_trial(study_id, template_trial, session)" in source


def test_trial_system_attributes_are_rows_of_trialsystemattributemodel_as_json(url):
    study = _study(url)
    trial = study.ask()
    storage = open_storage(url)
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name("s"), trial.number)
    storage.set_trial_system_attr(trial_id, "token", "abc")
    session = storage.scoped_session()
    row = (session.query(models.TrialModel).join(models.TrialSystemAttributeModel)
           .filter(models.TrialSystemAttributeModel.key == "token")
           .filter(models.TrialSystemAttributeModel.value_json == json.dumps("abc")).one())
    assert row.trial_id == trial_id
    session.close()


def test_optuna_study__optimize_logs_a_caught_failure_with_its_traceback(url, caplog):
    def dropped(trial):
        raise KeyError("dropped on purpose")

    with caplog.at_level(logging.WARNING):
        optuna.create_study().optimize(dropped, n_trials=1, catch=(KeyError,))
    [record] = [r for r in caplog.records if "dropped on purpose" in r.getMessage()]
    assert record.name == optuna_private.OPTIMIZE_LOGGER and record.exc_info is not None


def test_optimize_raises_valueerror_for_a_trial_another_worker_failed(url):
    """As a worker's objective does when its trial's writes find it failed (UpdateFinishedTrialError -> TrialDropped)."""
    study = _study(url)
    elsewhere = open_storage(url)  # another worker's connection

    def failed_meanwhile(trial):
        study_id = elsewhere.get_study_id_from_name(study.study_name)
        trial_id = elsewhere.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        elsewhere.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
        raise KeyError("dropped: failed as stale by another worker")

    with pytest.raises(optuna_private.TellingAFinishedTrial, match="Cannot tell a FAIL trial"):
        study.optimize(failed_meanwhile, n_trials=1, catch=(KeyError,))


def test_study_system_attrs_reads_them_through_study__storage(url):
    study = _study(url)
    storage = open_storage(url)
    storage.set_study_system_attr(storage.get_study_id_from_name("s"), "fer_opt.file", "text")
    assert optuna_private.study_system_attrs(study) == {"fer_opt.file": "text"}


def test_storage_of_is_the_storage_the_study_was_loaded_from(url):
    study = _study(url)
    optuna.create_study(study_name="s/rung-1", storage=optuna_private.storage_of(study))
    assert "s/rung-1" in optuna.get_all_study_names(open_storage(url))


def test_record_intermediate_value_stores_what_report_refuses_for_a_multi_objective_trial(url):
    study = optuna.create_study(study_name="mo", storage=open_storage(url), directions=["maximize", "minimize"])
    trial = study.ask()
    with pytest.raises(NotImplementedError):
        trial.report(0.5, 1)
    optuna_private.record_intermediate_value(trial, 1, 0.5)
    assert optuna_private.latest(trial).intermediate_values == {1: 0.5}


def test_tpe_reads_trials_through_study__get_trials(url, monkeypatch):
    study = _study(url)
    for _ in range(3):
        _ask_and_finish(study)
    seen = []
    original = getattr(optuna.Study, optuna_private.TPE_READS_TRIALS)
    monkeypatch.setattr(optuna.Study, optuna_private.TPE_READS_TRIALS,
                        lambda self, *a, **k: seen.append(1) or original(self, *a, **k))
    optuna.samplers.TPESampler(n_startup_trials=1, seed=0).sample_independent(
        study, study.ask(), "x", optuna.distributions.FloatDistribution(0, 1))
    assert seen, "TPE no longer reads trials through Study._get_trials"
