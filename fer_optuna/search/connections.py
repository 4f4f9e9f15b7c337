"""Connections to a PostgreSQL study storage: a server with no free connection slot is waited for,
and no statement outlives its transaction, so that a transaction pooler (PgBouncer) may stand in front.

A full server is up and serving the other workers: a slot frees when one of them ends, so a process
that finds none waits for as long as it takes (one line when it starts waiting, a reminder every
ten minutes) instead of failing. The wait is at the connection itself, so it holds for every
caller alike: opening the storage, any later call, the heartbeat's thread.
"""

from __future__ import annotations

import logging
import random
import time
import weakref
from typing import Any

_log = logging.getLogger("fer_optuna.storage")

# What PostgreSQL answers when every connection slot is taken (SQLSTATE 53300), and PgBouncer when
# its own client limit is reached.
FULL = ("too many clients", "remaining connection slots are reserved", "no more connections allowed")
REMINDER_SECONDS = 600
LONGEST_PAUSE = 10.0


def engine_kwargs(url: str, shown_url: str) -> dict[str, Any]:
    """The SQLAlchemy engine of a PostgreSQL storage; `shown_url` is the URL as messages show it."""
    # One connection kept per process, so that a fleet needs a slot per process: a worker's trial and its
    # heartbeat take turns on it, a transaction (milliseconds) each. A second is made only while both want
    # one at once (and while Optuna sets up a new database), and closed after. The kept one is pre-pinged
    # (a server restart drops it) and never recycled: given back, its slot could go to another process.
    return {"creator": WaitingConnect(url, shown_url), "pool_pre_ping": True, "pool_size": 1, "max_overflow": 1,
            "pool_timeout": None}


def is_full(error: BaseException | None) -> bool:
    """The server refused a connection for want of a free slot, somewhere in the exception's cause chain."""
    while error is not None:
        if getattr(error, "sqlstate", None) == "53300" or any(reason in str(error) for reason in FULL):
            return True
        error = error.__cause__ or error.__context__
    return False


class WaitingConnect:
    """The engine's `creator`: a new DBAPI connection, made as SQLAlchemy would make it from the URL,
    waiting while the server is full. Plain data, so a storage that holds it can be pickled."""

    def __init__(self, url: str, shown_url: str):
        self.url, self.shown_url = url, shown_url
        self._args: tuple[Any, list, dict] | None = None
        self._made: weakref.WeakSet = weakref.WeakSet()

    def __getstate__(self) -> dict:
        return {"url": self.url, "shown_url": self.shown_url}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["url"], state["shown_url"])

    def _holds_one(self) -> bool:
        """This process already holds a connection to the server: one of its threads has it for a
        transaction. Waiting for a second slot here, while every other process did the same, would
        wait for ever; the caller's retry (storage.retried) takes the one held when it is given back."""
        return any(not conn.closed for conn in self._made)

    def _connect_args(self) -> tuple[Any, list, dict]:
        """The dialect and the arguments of its connect(), from an engine of the same URL that never connects."""
        if self._args is None:
            from sqlalchemy import create_engine

            engine = create_engine(self.url)
            cargs, cparams = engine.dialect.create_connect_args(engine.url)
            if engine.dialect.driver == "psycopg":
                # psycopg prepares a statement run five times on the server, for that session only; behind a
                # transaction pooler the next transaction may run on another server session, which lacks it.
                cparams = {**cparams, "prepare_threshold": None}
            self._args = (engine.dialect, cargs, cparams)
        return self._args

    def __call__(self):
        dialect, cargs, cparams = self._connect_args()
        since = told = None
        pause = 0.5
        while True:
            try:
                conn = dialect.connect(*cargs, **cparams)
                self._made.add(conn)
                return conn
            except Exception as e:
                if not is_full(e) or self._holds_one():
                    raise
                now = time.monotonic()
                if since is None:
                    since = told = now
                    _log.warning("study storage %s is full (no free connection slot); waiting for one. Each process "
                                 "holds one connection: raise the server's max_connections, or put a transaction "
                                 "pooler such as PgBouncer in front of it (docs/many-machines.md)", self.shown_url)
                elif now - told >= REMINDER_SECONDS:
                    told = now
                    _log.warning("study storage %s still full after %.0f min; waiting", self.shown_url, (now - since) / 60)
                # Spread out, so that the waiting processes do not all knock at once when a slot frees.
                time.sleep(pause * random.uniform(0.5, 1.5))
                pause = min(2 * pause, LONGEST_PAUSE)
