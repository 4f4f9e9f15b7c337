"""The study storage: SQLite (one machine, no server) or PostgreSQL (many machines).

Opening a storage makes it fit for many long-lived workers: SQLite in WAL mode with
writes serialised, PostgreSQL with pre-pinged pooled connections, and every call
retried while the database is away (a restart, a locked file). Errors say how to fix
the URL, and no message ever shows a password.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import sqlite3
import time
import uuid
import warnings
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, TypeVar

import optuna
from optuna.trial import FrozenTrial, TrialState

from fer_optuna.errors import FerOptError
from fer_optuna.options import StoreOptions
from . import connections, retry
from .optuna_private import RDBStorageInternals

_log = logging.getLogger("fer_optuna.storage")
_RDB = optuna.storages.RDBStorage
T = TypeVar("T")
DEFAULT_STORAGE = "sqlite:///studies/fer2013.db"


def storage_url(url: str | None) -> str:
    return url or DEFAULT_STORAGE


def mask_url(url: str) -> str:
    """The URL with its password replaced by ***, for every message and log line."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url.split("@")[-1] if "@" in url else url


# What PostgreSQL answers while it shuts down, starts or recovers.
PG_RESTARTING = ("the database system is shutting down", "the database system is starting up",
                 "the database system is in recovery mode", "the database system is not yet accepting connections")


REFUSED_WAIT_SECONDS = 15


def open_storage(url: str | None = None, heartbeat: bool = False,
                 options: StoreOptions | None = None) -> optuna.storages.RDBStorage:
    """An RDB storage fit for many long-lived workers; errors say how to fix the URL. `options`: how long
    the database is waited for, and the heartbeat's interval (with `heartbeat`, as a worker's storage)."""
    import sqlalchemy.exc

    options = options or StoreOptions()
    url = storage_url(url)
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        path.parent.mkdir(parents=True, exist_ok=True)
        # WAL lets readers and the one writer work at once; the busy timeout makes
        # writers queue instead of failing with "database is locked".
        conn = sqlite3.connect(path, timeout=60)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.close()
        engine_kwargs = {"connect_args": {"timeout": 60}}
    start, warned = time.monotonic(), False
    while True:
        try:
            if url.startswith("postgresql"):
                engine_kwargs = connections.engine_kwargs(url, mask_url(url))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                hb: dict[str, Any] = {}
                if heartbeat:
                    beat = options.heartbeat_seconds
                    requeue = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3, inherit_intermediate_values=True)
                    hb = {"heartbeat_interval": beat, "grace_period": 3 * beat, "heartbeat_stale_trial_callback": requeue}
                # Optuna's own schema check holds a connection while it takes another: with every process
                # doing that at once on a full server, each could hold one and wait for its second for ever.
                storage = RetryingRDBStorage(url, engine_kwargs=engine_kwargs, skip_compatibility_check=True, **hb)
            break
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as e:
            reason = str(getattr(e, "orig", e)).strip().splitlines()[0]
            # A server that is restarting says so: wait for it, as every later call does. One that
            # refuses connections may be between stop and start: wait a little. Anything else (a
            # wrong host or password) is the user's to fix, so it fails at once.
            restarting = any(state in reason for state in PG_RESTARTING)
            wait = options.db_retry_seconds if restarting else min(REFUSED_WAIT_SECONDS, options.db_retry_seconds)
            if (restarting or "Connection refused" in reason) and time.monotonic() - start < wait:
                if not warned:
                    _log.warning("study storage %s %s; waiting up to %.0f s", mask_url(url),
                                 "is restarting" if restarting else "refuses connections", wait)
                    warned = True
                time.sleep(1.0)
                continue
            raise FerOptError(f"cannot reach the study storage {mask_url(url)}: {reason}; check the host, port, "
                              "database name and credentials in the storage URL", flag="--storage") from None
        except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError, ImportError, ValueError) as e:
            raise FerOptError(f"bad storage URL {mask_url(url)} ({e}); use sqlite:///path.db or "
                              "postgresql+psycopg://user:pass@host/db (pip install 'fer-optuna[postgres]')") from None
    storage.retry_seconds = options.db_retry_seconds
    if storage.get_current_version() != storage.get_head_version():
        raise FerOptError(f"the study storage {mask_url(url)} has tables of Optuna schema {storage.get_current_version()}, "
                          f"this Optuna ({optuna.__version__}) needs {storage.get_head_version()}: upgrade its tables with "
                          "Optuna's `optuna storage upgrade`, or use the Optuna version that made them")
    if storage.engine.dialect.name == "sqlite":
        _serialize_sqlite_writes(storage.engine)
    return storage


def _is_transient(error: BaseException | None) -> bool:
    """A lost connection or a locked database somewhere in the exception's cause chain."""
    import sqlalchemy.exc

    while error is not None:
        if isinstance(error, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
            return True
        if isinstance(error, sqlalchemy.exc.DBAPIError) and error.connection_invalidated:
            return True
        error = error.__cause__ or error.__context__
    return False


def _retrying(method):
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        return self.retried(lambda: method(self, *args, **kwargs))

    return call


class RetryingRDBStorage(RDBStorageInternals):
    """Optuna's RDB storage that waits out a database restart instead of failing the worker.

    Every storage call, the heartbeat's included, is retried with backoff while the
    error is a lost connection (or a locked SQLite file); other errors pass through.
    Pooled connections are pre-pinged, so the retry reconnects. The methods below are
    the whole public storage API (a test checks that none is missing); the private ones
    that Optuna's own cache and heartbeat call are in optuna_private.RDBStorageInternals.

    A retried write must not be done twice when the database committed it but its answer
    was lost, nor taken for done when another process made it: each write that cannot be
    repeated commits a token of its own (a system attribute that reads leave out) in its
    transaction, and its retry looks for that token first. Studies and trials are made with
    CREATE_TOKEN; each state change writes STATE_TOKEN, so the one process that claims a
    queued trial, or fails a stale one, is the one whose token the trial holds.
    """

    CREATE_TOKEN = "fer_opt:create_token"
    STATE_TOKEN = "fer_opt:state_token"
    TOKENS = (CREATE_TOKEN, STATE_TOKEN)

    def retried(self, call: Callable[[], T]) -> T:
        """call() until it returns, reconnecting while the database is away (StoreOptions.db_retry_seconds)."""
        seconds = self.retry_seconds
        return retry.retried(
            call, _is_transient, seconds,
            warn=functools.partial(self._warn_unavailable, seconds=seconds),
            gave_up=lambda e: FerOptError(f"lost the study storage {mask_url(self.url)} for over {seconds:.0f} s; check "
                                          "that the database server is up (StoreOptions.db_retry_seconds sets the wait)",
                                          setting="StoreOptions.db_retry_seconds"),
            before_retry=self.scoped_session.remove,  # drop the broken session; the next call reconnects
            # At most a heartbeat interval, so that heartbeats resume within one of the server's return.
            longest_pause=self.heartbeat_interval or 10.0)

    def _warn_unavailable(self, error: Exception, seconds: float) -> None:
        # A full server refusing this process a second connection, while its other thread holds the one it
        # keeps, is no outage: the retry takes the kept one when it is given back (connections.py).
        if not connections.is_full(error):
            _log.warning("study storage %s unavailable (%s); retrying for up to %.0f s", mask_url(self.url),
                         type(error).__name__, seconds)

    # ----------------------------------------------------------------------- writes safe to retry

    def retried_write(self, first: Callable[[], T], again: Callable[[], T]) -> T:
        """first(), and after a transient failure, again() until it returns. The failed try may have
        committed though its answer was lost: again() tells that apart from a write never made."""
        tries = iter([first])
        return self.retried(lambda: next(tries, again)())

    def create_trial_once(self, study_id: int, template: FrozenTrial | None, create) -> FrozenTrial:
        """create(study_id, template) with a token in the template, so that however often the
        transaction is tried, one trial is made (optuna_private finds it by the token)."""
        if template is None:  # what Optuna makes without a template
            template = FrozenTrial(number=-1, state=TrialState.RUNNING, value=None, values=None,
                                   datetime_start=datetime.now(), datetime_complete=None, params={}, distributions={},
                                   user_attrs={}, system_attrs={}, intermediate_values={}, trial_id=-1)
        else:
            template = copy.deepcopy(template)
        template.system_attrs = {**template.system_attrs, self.CREATE_TOKEN: uuid.uuid4().hex}
        return self.without_tokens(self.retried(functools.partial(create, study_id, template)))

    @classmethod
    def attrs_without_tokens(cls, attrs: dict[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in attrs.items() if key not in cls.TOKENS}

    def without_tokens(self, trial: FrozenTrial) -> FrozenTrial:
        if any(key in trial.system_attrs for key in self.TOKENS):
            trial.system_attrs = self.attrs_without_tokens(trial.system_attrs)
        return trial

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        """Optuna's, made safe to retry. A retry whose earlier try left this call's token on the trial was
        done; otherwise it writes again, and answers as Optuna does: False for a queued trial another
        process claimed meanwhile, UpdateFinishedTrialError for a trial another process finished."""
        token = uuid.uuid4().hex
        write = functools.partial(self._set_trial_state_values_with_token, trial_id, state, values, token)
        return self.retried_write(
            write, lambda: _RDB.get_trial_system_attrs(self, trial_id).get(self.STATE_TOKEN) == token or write())

    def create_new_study(self, directions: Sequence[optuna.study.StudyDirection], study_name: str | None = None) -> int:
        """Optuna's, made safe to retry: a retry whose earlier try made the study (it holds this call's
        token) returns it; a study of that name made by anyone else is a DuplicatedStudyError, as in Optuna."""
        token = uuid.uuid4().hex
        write = functools.partial(self._create_new_study_with_token, directions, study_name, token)

        def made_or_write() -> int:
            made = [s.study_name for s in _RDB.get_all_studies(self) if s.system_attrs.get(self.CREATE_TOKEN) == token]
            return _RDB.get_study_id_from_name(self, made[0]) if made else write()

        return self.retried_write(write, made_or_write)

    def delete_study(self, study_id: int) -> None:
        """Optuna's, made safe to retry: a retry that finds the study gone is done (the earlier try's commit
        went through, or another process deleted it meanwhile); a study missing at first is a KeyError, as in Optuna."""

        def gone_or_delete() -> None:
            with contextlib.suppress(KeyError):
                _RDB.delete_study(self, study_id)

        self.retried_write(functools.partial(_RDB.delete_study, self, study_id), gone_or_delete)

    def get_trial(self, trial_id: int) -> FrozenTrial:
        return self.without_tokens(self.retried(functools.partial(_RDB.get_trial, self, trial_id)))

    def get_trial_system_attrs(self, trial_id: int) -> dict[str, Any]:
        return self.get_trial(trial_id).system_attrs

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self.attrs_without_tokens(self.retried(functools.partial(_RDB.get_study_system_attrs, self, study_id)))

    def get_all_studies(self) -> list[optuna.study.FrozenStudy]:
        studies = self.retried(functools.partial(_RDB.get_all_studies, self))
        for study in studies:
            study.system_attrs = self.attrs_without_tokens(study.system_attrs)
        return studies

    def confirmed_stale(self, stale_now: Callable[[], list[int]]) -> list[int]:
        """Running trials whose heartbeat is older than the grace period, and still is two intervals later.

        An outage of the database stops every worker's heartbeat at once, so just after the
        server returns a live worker's trial looks as stale as a dead one's; failing it would
        throw its work away. A live worker's heartbeat resumes within an interval, a dead one's never.
        """
        stale = stale_now()
        if stale:
            time.sleep(2 * self.heartbeat_interval)
            stale = [i for i in stale_now() if i in stale]
        return stale

    # ----------------------------------------------------------------------- the rest of the API, retried
    retry_seconds = StoreOptions.db_retry_seconds  # how long a lost database is waited for; open_storage sets it

    set_study_user_attr = _retrying(_RDB.set_study_user_attr)
    set_study_system_attr = _retrying(_RDB.set_study_system_attr)
    get_study_id_from_name = _retrying(_RDB.get_study_id_from_name)
    get_study_name_from_id = _retrying(_RDB.get_study_name_from_id)
    get_study_directions = _retrying(_RDB.get_study_directions)
    get_study_user_attrs = _retrying(_RDB.get_study_user_attrs)
    create_new_trial = _RDB.create_new_trial  # it calls _create_new_trial, made safe to retry above
    set_trial_param = _retrying(_RDB.set_trial_param)
    get_trial_id_from_study_id_trial_number = _retrying(_RDB.get_trial_id_from_study_id_trial_number)
    get_trial_number_from_id = _retrying(_RDB.get_trial_number_from_id)
    get_trial_param = _retrying(_RDB.get_trial_param)
    set_trial_intermediate_value = _retrying(_RDB.set_trial_intermediate_value)
    set_trial_user_attr = _retrying(_RDB.set_trial_user_attr)
    set_trial_system_attr = _retrying(_RDB.set_trial_system_attr)
    get_all_trials = _retrying(_RDB.get_all_trials)
    get_n_trials = _retrying(_RDB.get_n_trials)
    get_best_trial = _retrying(_RDB.get_best_trial)
    get_trial_params = _retrying(_RDB.get_trial_params)
    get_trial_user_attrs = _retrying(_RDB.get_trial_user_attrs)
    record_heartbeat = _retrying(_RDB.record_heartbeat)
    get_heartbeat_interval = _retrying(_RDB.get_heartbeat_interval)
    get_heartbeat_stale_trial_callback = _retrying(_RDB.get_heartbeat_stale_trial_callback)
    get_all_versions = _retrying(_RDB.get_all_versions)
    get_current_version = _retrying(_RDB.get_current_version)


def _serialize_sqlite_writes(engine) -> None:
    """Make every SQLite transaction BEGIN IMMEDIATE.

    SQLite ignores SELECT ... FOR UPDATE, and pysqlite opens no transaction
    before a SELECT, so two workers could both read an enqueued trial as
    WAITING and both run it. Taking the write lock at BEGIN makes Optuna's
    read-check-write atomic; the busy timeout queues the workers.
    (SQLAlchemy's documented pysqlite recipe.)
    """
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_pysqlite_transactions(dbapi_connection, record):
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections made before the hooks reconnect with them
