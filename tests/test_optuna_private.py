"""Each use of Optuna's private parts (fer_optuna/search/optuna_private.py) has a test here, named after
it, that fails when the Optuna behaviour it relies on changes: an upgrade breaks a test, not a study."""
import concurrent.futures
import inspect
import json
import logging
import time
import warnings

import optuna
import pytest
import sqlalchemy
from optuna.storages._rdb import models
from optuna.trial import TrialState

from fer_optuna.search import optuna_private
from fer_optuna.search.storage import RetryingRDBStorage, open_storage


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


def _locked_elsewhere(url, table, key, row_id) -> bool:
    """Whether another transaction holds the row: this connection cannot lock it without waiting."""
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text(f"SELECT 1 FROM {table} WHERE {key} = :id FOR UPDATE NOWAIT"), {"id": row_id})
        return False
    except sqlalchemy.exc.OperationalError as e:
        assert "could not obtain lock" in str(e)
        return True
    finally:
        engine.dispose()


def test_rdbstorage__get_prepared_new_trial_makes_the_trial_in_the_creating_transaction(postgres, monkeypatch):
    """RDBStorageInternals looks for a trial's token in _get_prepared_new_trial: Optuna must call it inside the
    transaction that makes the trial, with the study's row locked, so that two tries cannot both miss the trial."""
    params = list(inspect.signature(optuna.storages.RDBStorage._get_prepared_new_trial).parameters)
    assert params == ["self", "study_id", "template_trial", "session"]
    url = postgres.new_database()
    study = _study(url)
    seen = []
    original = optuna.storages.RDBStorage._get_prepared_new_trial

    def spy(self, study_id, template_trial, session):
        seen.append(("study locked", _locked_elsewhere(url, "studies", "study_id", study_id)))
        made = original(self, study_id, template_trial, session)
        seen.append(("made in that transaction", made in session))
        return made

    monkeypatch.setattr(optuna.storages.RDBStorage, "_get_prepared_new_trial", spy)
    study.ask()
    assert seen == [("study locked", True), ("made in that transaction", True)]


def test_trialmodel_find_or_raise_by_id_for_update_makes_a_claim_wait_for_the_transaction_holding_the_trial(postgres):
    """_set_trial_state_values_with_token reads the trial FOR UPDATE, as Optuna's set_trial_state_values does: a
    claim waits while another worker's transaction holds the trial, then sees that worker's claim, and loses."""
    url = postgres.new_database()
    study = _study(url)
    study.enqueue_trial({"x": 0.5})
    storage = open_storage(url)
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name("s"), 0)
    engine = sqlalchemy.create_engine(url)
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool, engine.connect() as watcher:
            with engine.begin() as other:  # another worker's claim, under way
                other.execute(sqlalchemy.text("SELECT 1 FROM trials WHERE trial_id = :id FOR UPDATE"), {"id": trial_id})
                claim = pool.submit(storage.set_trial_state_values, trial_id, TrialState.RUNNING)
                deadline = time.monotonic() + 30
                while not watcher.execute(sqlalchemy.text(  # a new snapshot each time: outside any transaction
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")).scalar():
                    watcher.rollback()
                    assert time.monotonic() < deadline and not claim.done(), "the claim did not wait for the lock"
                    time.sleep(0.05)
                assert not claim.done()
                other.execute(sqlalchemy.text("UPDATE trials SET state = 'RUNNING' WHERE trial_id = :id"), {"id": trial_id})
            assert claim.result(timeout=30) is False
    finally:
        engine.dispose()


@pytest.mark.parametrize("start, state, values", [
    (TrialState.WAITING, TrialState.RUNNING, None),
    (TrialState.RUNNING, TrialState.RUNNING, None),
    (TrialState.RUNNING, TrialState.COMPLETE, [0.5]),
    (TrialState.RUNNING, TrialState.WAITING, None),
    (TrialState.COMPLETE, TrialState.FAIL, None),
])
def test_rdbstorage_set_trial_state_values_is_what__set_trial_state_values_with_token_does(url, start, state, values):
    """RDBStorageInternals._set_trial_state_values_with_token repeats Optuna's transaction (its private helpers
    included) with a token in it: the same answers and trials as Optuna's, and the token only where the write was made."""
    storage = open_storage(url)
    study_id = storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], "s")

    def outcome(write):
        trial_id = storage.create_new_trial(study_id, optuna.trial.create_trial(
            state=start, value=1.0 if start == TrialState.COMPLETE else None))
        try:
            answer = write(trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            answer = "UpdateFinishedTrialError"
        trial = optuna.storages.RDBStorage.get_trial(storage, trial_id)
        token = trial.system_attrs.get(storage.STATE_TOKEN)
        return (answer, trial.state, trial.values, trial.datetime_start is not None, trial.datetime_complete is not None), token

    optunas, no_token = outcome(lambda i: optuna.storages.RDBStorage.set_trial_state_values(storage, i, state, values))
    ours, token = outcome(lambda i: storage._set_trial_state_values_with_token(i, state, values, "t0"))
    assert ours == optunas and no_token is None
    assert token == ("t0" if ours[0] is True else None)


@pytest.mark.parametrize("name", ["s", "", None])
def test_rdbstorage_create_new_study_is_what__create_new_study_with_token_does(tmp_path, name):
    """RDBStorageInternals._create_new_study_with_token repeats Optuna's transaction with a study system attribute
    in it (a StudySystemAttributeModel row): the same study, a duplicate refused the same way, and the token."""
    directions = [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]

    def outcome(create, url):
        storage = open_storage(url)
        study_id = create(storage)
        again = create(storage) if name is not None else None
        study_name = storage.get_study_name_from_id(study_id)
        return ((study_name[:-36] if name is None else study_name), storage.get_study_directions(study_id), again,
                optuna.storages.RDBStorage.get_study_system_attrs(storage, study_id))

    def creating(write):
        def create(storage):
            try:
                return write(storage)
            except optuna.exceptions.DuplicatedStudyError:
                return "DuplicatedStudyError"
        return create

    optunas = outcome(creating(lambda s: optuna.storages.RDBStorage.create_new_study(s, directions, name)),
                      f"sqlite:///{tmp_path}/optuna.db")
    ours = outcome(creating(lambda s: s._create_new_study_with_token(directions, name, "t0")), f"sqlite:///{tmp_path}/ours.db")
    assert ours[:3] == optunas[:3] and optunas[3] == {}
    assert ours[3] == {RetryingRDBStorage.CREATE_TOKEN: "t0"}


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


@pytest.mark.parametrize("sample", ["sample_relative", "sample_independent"])
def test_tpe_reads_trials_through_study__get_trials(url, sample):
    """MultiObjectiveTPESampler hands TPE a view of the study whose _get_trials changes what TPE sees, so every
    one of TPE's reads must go through it: through a view that hides every trial, TPE samples as on a new study."""
    study = _study(url)
    for _ in range(3):
        _ask_and_finish(study)
    hidden = type("Hidden", (), {"__getattr__": lambda self, name: getattr(study, name),
                                 optuna_private.TPE_READS_TRIALS: lambda self, *a, **k: []})()
    x = {"x": optuna.distributions.FloatDistribution(0, 1)}

    def draw(seen):
        sampler = optuna.samplers.TPESampler(n_startup_trials=1, seed=0, multivariate=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if sample == "sample_relative":
                return sampler.sample_relative(seen, study.ask(), x)
            return sampler.sample_independent(seen, study.ask(), "x", x["x"])

    new = optuna.create_study()
    assert draw(hidden) == draw(new) != draw(study), "TPE read trials past Study._get_trials"
