"""Storage writes that are safe to retry: the database commits a write, its answer is lost, the
storage tries again; the trial is not made twice, and a finished trial is not reported as taken over."""
import contextlib

import optuna
import pytest
from sqlalchemy import event
from optuna.trial import TrialState

from fer_optuna.search.storage import open_storage


@contextlib.contextmanager
def answer_lost_once(storage, write: str):
    """The next transaction that runs `write` (an SQL statement's start) commits in the database, then its
    caller gets the error a dropped connection gives, as when the server's answer to COMMIT is lost."""
    engine, dialect = storage.engine, storage.engine.dialect
    statements, lost = [], []

    def record(conn, cursor, statement, *args):
        statements.append(statement)

    def commit_then_lose_the_answer(dbapi_connection):
        type(dialect).do_commit(dialect, dbapi_connection)
        ran, statements[:] = list(statements), []
        if not lost and any(s.startswith(write) for s in ran):
            lost.append(True)
            raise dialect.dbapi.OperationalError("server closed the connection unexpectedly")

    event.listen(engine, "before_cursor_execute", record)
    dialect.do_commit = commit_then_lose_the_answer
    try:
        yield
    finally:
        del dialect.do_commit
        event.remove(engine, "before_cursor_execute", record)
    assert lost, f"the fault was never injected: no transaction ran {write}"


MAKE_TRIAL, SET_STATE = "INSERT INTO trials ", "UPDATE trials SET state"


def _stored(url, name):
    """The study's trials as a fresh, plain Optuna storage reads them from the database."""
    return optuna.load_study(study_name=name, storage=optuna.storages.RDBStorage(url)).get_trials()


@pytest.fixture
def study(storage_url):
    storage = open_storage(storage_url)
    return optuna.create_study(study_name="lost-answers", storage=storage, direction="maximize"), storage, storage_url


def test_a_trial_whose_creation_answer_is_lost_is_made_once(study, monkeypatch):
    study, storage, url = study
    monkeypatch.setenv("FER_OPT_DB_RETRY_SECONDS", "30")
    with answer_lost_once(storage, MAKE_TRIAL):
        trial = study.ask()
    assert trial.number == 0
    assert [(t.number, t.state) for t in _stored(url, study.study_name)] == [(0, TrialState.RUNNING)]
    assert study.trials[0].system_attrs == {}, "the creation token is the storage's own business"


def test_a_finished_trial_whose_answer_is_lost_stays_finished_with_its_value(study):
    study, storage, url = study
    trial = study.ask()
    trial.report(0.5, 1)
    with answer_lost_once(storage, SET_STATE):
        study.tell(trial, 0.75)  # raised UpdateFinishedTrialError before: "failed as stale by another worker"
    [stored] = _stored(url, study.study_name)
    assert stored.state == TrialState.COMPLETE and stored.value == 0.75


def test_an_enqueued_trial_is_made_once_and_taken_once(study):
    study, storage, url = study
    with answer_lost_once(storage, MAKE_TRIAL):
        study.enqueue_trial({"x": 0.5})
    with answer_lost_once(storage, SET_STATE):  # WAITING -> RUNNING: this worker took it, though its answer was lost
        trial = study.ask()
    assert trial.number == 0 and trial.suggest_float("x", 0, 1) == 0.5
    assert [(t.number, t.state) for t in _stored(url, study.study_name)] == [(0, TrialState.RUNNING)]


def test_optunas_own_storage_makes_a_second_trial_on_the_same_fault(storage_url):
    """The fault is real: Optuna's RDBStorage tries the transaction again and makes two trials."""
    storage = optuna.storages.RDBStorage(storage_url)
    study = optuna.create_study(study_name="plain", storage=storage)
    with answer_lost_once(storage, MAKE_TRIAL):
        study.ask()
    assert len(_stored(storage_url, "plain")) == 2
