"""Optuna's own storage test suite (optuna.testing.pytest_storages, shipped in its wheel), run against
the project's storage: retries, creation tokens and the stale-trial check change nothing it promises."""
import shutil

import pytest
from optuna.testing.pytest_storages import StorageTestCase

from fer_optuna.search.storage import open_storage


@pytest.fixture(scope="module")
def empty_db(tmp_path_factory):
    path = tmp_path_factory.mktemp("suite") / "empty.db"
    open_storage(f"sqlite:///{path}").engine.dispose()
    return path


@pytest.fixture
def storage(tmp_path, empty_db):
    """A fresh storage for each test: a copy of one empty database (making the tables takes longer)."""
    shutil.copy(empty_db, tmp_path / "suite.db")
    storage = open_storage(f"sqlite:///{tmp_path}/suite.db")
    yield storage
    storage.engine.dispose()


class TestRetryingRDBStorage(StorageTestCase):
    pass
