"""Chaos: 4 workers on a study of 9 tiny trials while workers are SIGKILLed and restarted
(and, on PostgreSQL, the server restarted while trials run). At the end: exactly the budget of
finished trials, none left running, every killed trial failed and retried, at least one retry
resumed from its checkpoint, no finished trial lost, no trial run twice, the workers that were
not killed exited 0, and SQLite never answered "database is locked"."""

import random
import re
import signal
import time

import optuna
import yaml
import pytest
from optuna.trial import TrialState

from conftest import TINY, fer_opt, tiny_study
from fer_optuna.search import storage as fer_storage
from test_workers import budget_drops, check_resumed_where_it_stopped, start_worker

pytestmark = pytest.mark.slow
BUDGET, WORKERS, KILLS = 9, 4, 3  # the 3 kills land in the first trials: 9 leave room for them


def test_chaos(storage_url, tmp_path, sample_csv, request):
    space = {**yaml.safe_load(TINY.read_text())["search_space"], "batch_size": {"type": "categorical", "choices": [64, 128]}}
    spec = tiny_study(tmp_path / "chaos.yaml", n_trials=BUDGET, train={"epochs": 4}, search_space=space)
    fer_opt("create-study", "--config", spec, "--storage", storage_url, "--data", sample_csv)
    args = ("--checkpoint-dir", str(tmp_path / "ckpt"))
    env = {"FER_OPT_HEARTBEAT": "1"}
    logs = [tmp_path / f"w{i}.log" for i in range(WORKERS)]
    procs = [start_worker(storage_url, log, *args, env=env) for log in logs]
    study = optuna.load_study(study_name="tiny", storage=fer_storage.open_storage(storage_url))
    rng = random.Random(0)
    kills, restarted_db, seen_finished = [], False, {}
    deadline = time.monotonic() + 600
    while any(p.poll() is None for p in procs):
        assert time.monotonic() < deadline, "the chaos study did not finish in 10 minutes"
        time.sleep(rng.uniform(1, 2.5))
        trials = study.get_trials()
        seen_finished.update({t.number: t.value for t in trials if t.state == TrialState.COMPLETE})
        if len(kills) < KILLS:
            # Kill a worker in the middle of a trial that has finished an epoch, so its retry can resume.
            # Only trials with retries left (max_retry=3): a fourth death is, by design, not retried.
            busy = {int(t.user_attrs["worker"].split(":")[1]): t.number for t in trials
                    if t.state == TrialState.RUNNING and t.intermediate_values and "worker" in t.user_attrs
                    and len(t.system_attrs.get("retry_history", [])) < 2}
            victims = [i for i, p in enumerate(procs) if p.poll() is None and p.pid in busy]
            if victims:
                i = rng.choice(victims)
                procs[i].send_signal(signal.SIGKILL)
                procs[i].wait()
                # The worker may have moved on since we looked: its trial is the one still RUNNING under it.
                tag = f":{procs[i].pid}"
                hit = [t.number for t in study.get_trials(states=(TrialState.RUNNING,))
                       if t.user_attrs.get("worker", "").endswith(tag)]
                kills.append(hit[0] if hit else None)
                logs[i] = tmp_path / f"w{i}-{len(kills)}.log"
                procs[i] = start_worker(storage_url, logs[i], *args, env=env)
        done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
        running = any(t.state == TrialState.RUNNING and t.intermediate_values for t in trials)
        if "postgres" in request.node.callspec.id and not restarted_db and done >= BUDGET // 3 and running:
            request.getfixturevalue("postgres").pg_ctl("restart", "fast")  # terminates every connection
            restarted_db = True
    # Every killed worker was replaced, so the last ones were never killed: each must exit cleanly.
    texts = [log.read_text() for log in tmp_path.glob("w*.log")]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, f"a worker exited with {p.returncode}:\n{log.read_text()[-3000:]}"
    assert not any("database is locked" in text for text in texts)
    started = [int(n) for text in texts for n in re.findall(r"trial (\d+) started", text)]
    assert len(started) == len(set(started)), f"a trial ran twice: {sorted(started)}"

    trials = study.get_trials()
    states = [t.state for t in trials]
    finished = states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    killed = {n for n in kills if n is not None}
    resumed = check_resumed_where_it_stopped(trials)
    print(f"\nchaos on {request.node.callspec.id}: {finished} finished ({states.count(TrialState.COMPLETE)} complete, "
          f"{states.count(TrialState.PRUNED)} pruned), {states.count(TrialState.FAIL)} failed, {len(kills)} kills "
          f"({len(killed)} mid-trial), "
          f"{len(retried)} retried, {len(resumed)} resumed, db restarted: {restarted_db}")
    assert len(kills) == KILLS and killed
    assert restarted_db == ("postgres" in request.node.callspec.id)
    assert finished == BUDGET
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    dropped = budget_drops(trials)
    failed = {t.number for t in trials if t.state == TrialState.FAIL}
    assert failed - dropped == killed, "only killed trials may fail"
    for number in killed:
        assert trials[number].state == TrialState.FAIL, f"killed trial {number} is {trials[number].state}"
        assert number in retried, f"killed trial {number} was not retried"
    assert resumed, "no retried trial resumed from its checkpoint"
    for number, value in seen_finished.items():
        assert trials[number].state == TrialState.COMPLETE and trials[number].value == value
