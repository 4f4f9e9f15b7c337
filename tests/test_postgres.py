"""Against a real PostgreSQL server: outages, storage copy, the dashboard, bad credentials. (Workers that live
through a server restart mid-study: tests/test_chaos.py.)"""

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import optuna
import pytest

from conftest import ROOT, TINY, fer_opt, tiny_study
from fer_optuna.search import storage as fer_storage
from fer_optuna.errors import FerOptError
from fer_optuna.options import StoreOptions
from pgserver import PASSWORD

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def test_storage_calls_wait_for_the_server_to_come_back(postgres, caplog):
    url = postgres.new_database()
    storage = fer_storage.open_storage(url)
    optuna.create_study(study_name="s", storage=storage)
    postgres.pg_ctl("stop", "fast")
    threading.Timer(3, postgres.pg_ctl, ("start",)).start()
    t0 = time.monotonic()
    assert [s.study_name for s in storage.get_all_studies()] == ["s"]
    assert time.monotonic() - t0 >= 2.5, "the call should have waited for the server"
    assert "unavailable" in caplog.text and PASSWORD not in caplog.text


def test_a_worker_started_while_the_server_restarts_waits_for_it(postgres, caplog):
    url = postgres.new_database()
    postgres.pg_ctl("stop", "fast")
    threading.Timer(3, postgres.pg_ctl, ("start",)).start()
    t0 = time.monotonic()
    storage = fer_storage.open_storage(url)
    assert time.monotonic() - t0 >= 2.5 and storage.get_all_studies() == []
    assert "refuses connections; waiting up to 15 s" in caplog.text and PASSWORD not in caplog.text


def test_storage_gives_up_with_a_fix_it_message(postgres):
    storage = fer_storage.open_storage(postgres.new_database(), options=StoreOptions(db_retry_seconds=2))
    postgres.pg_ctl("stop", "fast")
    try:
        with pytest.raises(FerOptError, match=r"lost the study storage postgresql\+psycopg://fer:\*\*\*@.* for over 2 s") as e:
            storage.get_all_studies()
        assert str(e.value).endswith("(StoreOptions.db_retry_seconds sets the wait)"), "in the library's terms"
        assert e.value.setting == "StoreOptions.db_retry_seconds", "the CLI adds FER_OPT_DB_RETRY_SECONDS"
    finally:
        postgres.pg_ctl("start")


def test_storage_copy_sqlite_to_postgres_and_back(postgres, tmp_path):
    sqlite = f"sqlite:///{tmp_path}/a.db"
    fer_opt("create-study", "--config", TINY, "--storage", sqlite, "--data", ROOT / "README.md")
    study = optuna.load_study(study_name="tiny", storage=sqlite)
    for value in (0.3, 0.5):
        trial = study.ask()
        trial.suggest_float("lr", 1e-4, 1e-2, log=True)
        trial.set_user_attr("worker", "host:1")
        trial.report(value / 2, 1)
        study.tell(trial, value)
    pg = postgres.new_database()
    fer_opt("storage", "copy", "--from", sqlite, "--to", pg)
    back = f"sqlite:///{tmp_path}/b.db"
    fer_opt("storage", "copy", "--from", pg, "--to", back)
    for url in (pg, back):
        copied = optuna.load_study(study_name="tiny", storage=url)
        assert copied.user_attrs == study.user_attrs
        assert [(t.number, t.state, t.value, t.params, t.user_attrs, t.intermediate_values) for t in copied.trials] == \
               [(t.number, t.state, t.value, t.params, t.user_attrs, t.intermediate_values) for t in study.trials]
    status = fer_opt("status", "--storage", pg).stdout
    assert "trials: 2 complete, 0 pruned" in status and "(2/8 of the budget)" in status
    again = fer_opt("storage", "copy", "--from", sqlite, "--to", pg, check=False)
    assert again.returncode == 2 and "already has a study 'tiny'" in again.stderr and PASSWORD not in again.stderr


def test_dashboard_serves_a_postgres_study(postgres, tmp_path):
    url = postgres.new_database()
    fer_opt("create-study", "--config", TINY, "--storage", url, "--data", ROOT / "README.md")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "fer_optuna.cli", "dashboard", "--storage", url, "--port", str(port)],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as response:
                    studies = json.load(response)["study_summaries"]
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "dashboard did not start"
                time.sleep(0.5)
        assert [s["study_name"] for s in studies] == ["tiny"]
    finally:
        server.send_signal(signal.SIGTERM)
        out = server.communicate(timeout=30)[0]
    assert PASSWORD not in out and "fer:***@" in out


def test_wrong_password_is_one_masked_line(postgres):
    proc = fer_opt("status", "--storage", postgres.url(password="wrong-pass"), check=False)
    assert proc.returncode == 2 and "wrong-pass" not in proc.stderr and PASSWORD not in proc.stderr
    assert "cannot reach the study storage" in proc.stderr and "password authentication failed" in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_every_storage_method_optuna_calls_is_retried():
    """Optuna's cache and heartbeat call some private backend methods; all of them must wait out an outage."""
    import inspect
    import re

    from optuna.storages import _cached_storage, _heartbeat

    called = set()
    for module in (_cached_storage, _heartbeat):
        called |= set(re.findall(r"(?:_backend|storage)\.(\w+)\(", inspect.getsource(module)))
    public = {n for n in vars(optuna.storages.BaseStorage) if not n.startswith("_")}  # the whole storage API
    rdb = {n for n in called | public if callable(getattr(optuna.storages.RDBStorage, n, None))}
    ours = {n for cls in fer_storage.RetryingRDBStorage.__mro__[:2] for n in vars(cls)}  # the storage and its internals
    missing = {n for n in rdb if n not in ours} - {"remove_session", "check_trial_is_updatable"}
    assert not missing, f"not retried: {sorted(missing)}"


def test_more_workers_than_connection_slots_wait_and_all_finish(small_postgres, tmp_path, sample_csv):
    """6 worker processes on a server where 4 connections are free (it holds 5; this test watches on one):
    those that find it full wait for a slot, and every one ends cleanly with the budget exact."""
    from pgserver import client_connections
    from test_workers import budget_drops, start_worker

    watch = small_postgres.connect()
    url = small_postgres.new_database()
    spec = tiny_study(tmp_path / "six.yaml", n_trials=6, train={"epochs": 1})
    fer_opt("create-study", "--config", spec, "--storage", url, "--data", sample_csv)
    logs = [tmp_path / f"worker{i}.log" for i in range(6)]
    procs = [start_worker(url, log, "--checkpoint-dir", tmp_path / "ckpt") for log in logs]
    peak = 0
    while any(p.poll() is None for p in procs):
        peak = max(peak, client_connections(watch))
        time.sleep(0.2)
    texts = [log.read_text() for log in logs]
    assert [p.returncode for p in procs] == [0] * 6, texts
    assert any("is full (no free connection slot); waiting for one" in text for text in texts), texts
    assert all("Traceback" not in text and PASSWORD not in text for text in texts)
    # a second connection refused while the process holds one is no outage to report
    assert not any("unavailable" in text for text in texts), texts
    assert peak <= 4
    trials = optuna.load_study(study_name="tiny", storage=url).get_trials()
    states = [t.state for t in trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) + states.count(optuna.trial.TrialState.PRUNED) == 6
    assert optuna.trial.TrialState.RUNNING not in states and optuna.trial.TrialState.WAITING not in states
    assert {t.number for t in trials if t.state == optuna.trial.TrialState.FAIL} == budget_drops(trials)
    started = [int(n) for text in texts for n in re.findall(r"trial (\d+) started", text)]
    assert len(started) == len(set(started)), f"a trial ran twice: {sorted(started)}"
