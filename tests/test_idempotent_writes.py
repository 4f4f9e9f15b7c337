"""Storage writes that are safe to retry, on SQLite and PostgreSQL. A write's transaction fails under the storage,
at the driver's commit, in one of two ways: the database commits it and the answer is lost, or the commit never
arrives and another process writes meanwhile. The retry must tell the two apart: a trial or study is not made
twice, a finished trial stays finished, and a queued trial is claimed, or a stale one failed, by one process only.
The canaries run the same faults against the retries these replaced, and see them do the harm."""
import contextlib
import logging
import warnings
from datetime import datetime

import optuna
import pytest
from sqlalchemy import event
from optuna.trial import TrialState

from fer_optuna.options import StoreOptions
from fer_optuna.search.storage import RetryingRDBStorage, open_storage


@contextlib.contextmanager
def fails_once(storage, write: str, committed: bool = True, meanwhile=lambda: None):
    """The next transaction that runs `write` (an SQL statement's start) fails as a dropped connection does: the
    database commits it and its answer is lost (`committed`), or it is rolled back and `meanwhile()`, another
    process's work, runs before its caller gets the error."""
    engine, dialect = storage.engine, storage.engine.dialect
    statements, failed = [], []

    def record(conn, cursor, statement, *args):
        statements.append(statement)

    def commit_then_fail(dbapi_connection):
        ran, statements[:] = list(statements), []
        if failed or not any(s.startswith(write) for s in ran):
            return type(dialect).do_commit(dialect, dbapi_connection)
        failed.append(True)
        if committed:
            type(dialect).do_commit(dialect, dbapi_connection)
        else:
            type(dialect).do_rollback(dialect, dbapi_connection)
            meanwhile()
        raise dialect.dbapi.OperationalError("server closed the connection unexpectedly")

    event.listen(engine, "before_cursor_execute", record)
    dialect.do_commit = commit_then_fail
    try:
        yield
    finally:
        del dialect.do_commit
        event.remove(engine, "before_cursor_execute", record)
    assert failed, f"the fault was never injected: no transaction ran {write}"


def answer_lost(storage, write: str):
    return fails_once(storage, write, committed=True)


MAKE_TRIAL, SET_STATE = "INSERT INTO trials ", "UPDATE trials SET state"
MAKE_STUDY, DELETE_STUDY = "INSERT INTO studies ", "DELETE FROM studies "
_RDB = optuna.storages.RDBStorage


def _stored(url, name):
    """The study's trials as a fresh, plain Optuna storage reads them from the database."""
    return optuna.load_study(study_name=name, storage=_RDB(url)).get_trials()


def _studies(url):
    return [s.study_name for s in _RDB(url).get_all_studies()]


@pytest.fixture
def study(storage_url):
    storage = open_storage(storage_url, options=StoreOptions(db_retry_seconds=30))
    return optuna.create_study(study_name="lost-answers", storage=storage, direction="maximize"), storage, storage_url


def _shortcut_before_issue_51(self, trial_id, state, values=None):
    """The retry that set_trial_state_values had before: a trial that had the state after a failed try (a RUNNING
    one started since the call began) counted as this call's write."""
    began, tried = datetime.now(), False

    def once():
        nonlocal tried
        if tried:
            now = _RDB.get_trial(self, trial_id)
            if now.state == state and (values is None or now.values == [float(v) for v in values]) and \
                    (state != TrialState.RUNNING or now.datetime_start >= began):
                return True
        tried = True
        return _RDB.set_trial_state_values(self, trial_id, state, values)

    return self.retried(once)


def _retried_as_is(method):
    return lambda self, *args, **kwargs: self.retried(lambda: method(self, *args, **kwargs))


CANARY = pytest.mark.parametrize("canary", [False, True], ids=["fer-optuna", "canary"])


def test_a_trial_whose_creation_answer_is_lost_is_made_once(study):
    study, storage, url = study
    with answer_lost(storage, MAKE_TRIAL):
        trial = study.ask()
    assert trial.number == 0
    assert [(t.number, t.state) for t in _stored(url, study.study_name)] == [(0, TrialState.RUNNING)]


def test_a_finished_trial_whose_answer_is_lost_stays_finished_with_its_value(study, caplog):
    study, storage, url = study
    trial = study.ask()
    trial.report(0.5, 1)
    with caplog.at_level(logging.WARNING, "fer_optuna.storage"), answer_lost(storage, SET_STATE):
        study.tell(trial, 0.75)  # raised UpdateFinishedTrialError before: "failed as stale by another worker"
    [stored] = _stored(url, study.study_name)
    assert stored.state == TrialState.COMPLETE and stored.value == 0.75
    assert "retrying for up to 30 s" in caplog.text, "the storage waits StoreOptions.db_retry_seconds"


def test_an_enqueued_trial_is_made_once_and_taken_once_and_no_read_shows_the_tokens(study):
    study, storage, url = study
    with answer_lost(storage, MAKE_TRIAL):
        study.enqueue_trial({"x": 0.5})
    with answer_lost(storage, SET_STATE):  # WAITING -> RUNNING: this worker took it, though its answer was lost
        trial = study.ask()
    assert trial.number == 0 and trial.suggest_float("x", 0, 1) == 0.5
    assert [(t.number, t.state) for t in _stored(url, study.study_name)] == [(0, TrialState.RUNNING)]
    study.tell(trial, 0.5)
    study_id, [stored] = storage.get_study_id_from_name(study.study_name), _stored(url, study.study_name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, 0)
    assert set(stored.system_attrs) == {"fixed_params", *RetryingRDBStorage.TOKENS}, "the database holds the tokens"
    assert set(_RDB(url).get_study_system_attrs(study_id)) == {RetryingRDBStorage.CREATE_TOKEN}
    reads = [study.trials[0].system_attrs, storage.get_trial(trial_id).system_attrs,
             storage.get_all_trials(study_id)[0].system_attrs, storage.get_trial_system_attrs(trial_id),
             storage.get_best_trial(study_id).system_attrs, storage.get_study_system_attrs(study_id),
             storage.get_all_studies()[0].system_attrs]
    assert reads == [{"fixed_params": {"x": 0.5}}] * 5 + [{}] * 2, "the tokens are the storage's own business"


@CANARY
def test_a_claim_that_failed_while_another_worker_took_the_trial_does_not_take_it_too(study, canary, monkeypatch):
    study, storage, url = study
    if canary:
        monkeypatch.setattr(RetryingRDBStorage, "set_trial_state_values", _shortcut_before_issue_51)
    study.enqueue_trial({"x": 0.5})
    other = optuna.load_study(study_name=study.study_name, storage=open_storage(url))
    taken = []
    with fails_once(storage, SET_STATE, committed=False, meanwhile=lambda: taken.append(other.ask().number)):
        taken.append(study.ask().number)
    assert taken == ([0, 0] if canary else [0, 1]), "trial 0 must be run by one worker"


@CANARY
def test_a_stale_trial_that_two_workers_fail_at_once_is_queued_again_once(study, canary, monkeypatch):
    study, storage, url = study
    if canary:
        monkeypatch.setattr(RetryingRDBStorage, "set_trial_state_values", _shortcut_before_issue_51)
    dead = study.ask()  # its worker is gone
    dead.suggest_float("x", 0, 1)
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name), 0)
    monkeypatch.setattr(RetryingRDBStorage, "confirmed_stale", lambda self, stale_now: [trial_id])
    workers = [open_storage(url, heartbeat=True) for _ in range(2)]
    one, two = (optuna.load_study(study_name=study.study_name, storage=worker) for worker in workers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        with fails_once(workers[0], SET_STATE, committed=False, meanwhile=lambda: optuna.storages.fail_stale_trials(two)):
            optuna.storages.fail_stale_trials(one)
    trials = _stored(url, study.study_name)
    assert trials[0].state == TrialState.FAIL
    assert [t.system_attrs["failed_trial"] for t in trials if t.state == TrialState.WAITING] == ([0, 0] if canary else [0])


@pytest.mark.parametrize("name", ["named", None])
def test_a_study_whose_creation_answer_is_lost_is_made_once(storage_url, name):
    storage = open_storage(storage_url)
    with answer_lost(storage, MAKE_STUDY):
        study = optuna.create_study(study_name=name, storage=storage)
    assert _studies(storage_url) == [study.study_name]
    assert storage.get_all_studies()[0].system_attrs == {}


def test_a_study_another_process_made_while_the_creation_failed_is_a_duplicate(storage_url):
    storage = open_storage(storage_url)
    elsewhere = lambda: optuna.create_study(study_name="taken", storage=open_storage(storage_url))  # noqa: E731
    with fails_once(storage, MAKE_STUDY, committed=False, meanwhile=elsewhere), \
            pytest.raises(optuna.exceptions.DuplicatedStudyError):
        optuna.create_study(study_name="taken", storage=storage)


def test_canary_a_study_creation_retried_as_is_says_its_own_study_is_a_duplicate(storage_url, monkeypatch):
    monkeypatch.setattr(RetryingRDBStorage, "create_new_study", _retried_as_is(_RDB.create_new_study))
    storage = open_storage(storage_url)
    with answer_lost(storage, MAKE_STUDY), pytest.raises(optuna.exceptions.DuplicatedStudyError):
        optuna.create_study(study_name="named", storage=storage)


@CANARY
def test_a_study_whose_deletion_answer_is_lost_is_deleted_without_error(storage_url, canary, monkeypatch):
    if canary:
        monkeypatch.setattr(RetryingRDBStorage, "delete_study", _retried_as_is(_RDB.delete_study))
    storage = open_storage(storage_url)
    optuna.create_study(study_name="gone", storage=storage)
    with answer_lost(storage, DELETE_STUDY), pytest.raises(KeyError) if canary else contextlib.nullcontext():
        optuna.delete_study(study_name="gone", storage=storage)
    assert _studies(storage_url) == []


def test_optunas_own_storage_makes_a_second_trial_on_the_same_fault(storage_url):
    """The fault is real: Optuna's RDBStorage tries the transaction again and makes two trials."""
    storage = _RDB(storage_url)
    study = optuna.create_study(study_name="plain", storage=storage)
    with answer_lost(storage, MAKE_TRIAL):
        study.ask()
    assert len(_stored(storage_url, "plain")) == 2
