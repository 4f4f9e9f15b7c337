"""Real worker processes against a real SQLite file and a real PostgreSQL server."""

import collections
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import torch
import pytest
from optuna.trial import TrialState

from conftest import ROOT, TINY, fer_opt, fer_opt_interrupted, tiny_study
from held import held_command, held_file, release
from fer_optuna.training import checkpoints
from fer_optuna.search import storage as fer_storage
from fer_optuna.search import study as fer_study
from fer_optuna.training.config import load_config

pytestmark = pytest.mark.slow


def start_worker(url: str, log: Path, *args: str, env: dict | None = None, held_after: int = 0) -> subprocess.Popen:
    """A worker process, its trial files beside its log unless args say where (the default, studies/checkpoints
    in the checkout, would hand one test's saved epochs to another's trial of the same number); with held_after,
    its first trial is held after that epoch (tests/held.py) until release(log)."""
    cmd = ["worker", "--storage", url, "--gpu", "cpu", "--threads", "1", "--checkpoint-dir", log.parent / "checkpoints", *args]
    cmd = held_command(held_after, log, *cmd) if held_after else [sys.executable, "-m", "fer_optuna.cli", *map(str, cmd)]
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=ROOT,
                            env={**os.environ, "FER_OPT_HEARTBEAT": "1", **(env or {})})


def wait_held(proc: subprocess.Popen, log: Path) -> None:
    """Wait until a process started through tests/held.py, its output in `log`, holds its trial."""
    wait_for(lambda: held_file(log).exists() or proc.poll() is not None, 300, "the trial to be held")
    assert proc.poll() is None, f"the worker exited ({proc.returncode}) before holding its trial:\n{log.read_text()}"


def budget_drops(trials: list[optuna.trial.FrozenTrial]) -> set[int]:
    """Trials dropped, by design, because the budget was taken as they started (two workers can
    both start one as the last finished trial lands); such a trial runs nothing."""
    dropped = {t.number for t in trials if "budget" in t.user_attrs.get("fail_reason", "")}
    assert all(not trials[n].intermediate_values for n in dropped), "a trial dropped for the budget ran epochs"
    return dropped


def check_resumed_where_it_stopped(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """Each attempt that resumed went on from the last epoch the attempt it took over saved: the last that one
    reported, or the one after (saved as it died, before the report). A retry made by the heartbeat inherits the
    epochs reported before (inherit_intermediate_values); the epochs after the resumed one are its own, each once."""
    resumed = [t for t in trials if "resumed_at_epoch" in t.user_attrs]
    for t in resumed:
        at = t.user_attrs["resumed_at_epoch"]
        before = trials[t.user_attrs["resumed_from_trial"]].intermediate_values
        last = max(before, default=0)
        assert last <= at <= last + 1 and at >= 1, f"trial {t.number} resumed at epoch {at}; the attempt reported {last}"
        inherited = {e: v for e, v in t.intermediate_values.items() if e <= last}
        assert inherited in ({}, before), f"trial {t.number} reports {inherited} for the epochs its attempt reported {before}"
        own = sorted(e for e in t.intermediate_values if e > last)
        assert own == list(range(at + 1, at + 1 + len(own))), f"trial {t.number} resumed after epoch {at} reported {own}"
    return resumed


def load(url: str, name: str = "tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=url)


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def run_parallel_study(url: str, data: Path, tmp: Path, n_workers: int, spec: Path = TINY) -> tuple[optuna.Study, list[str]]:
    fer_opt("create-study", "--config", spec, "--storage", url, "--data", data)
    logs = [tmp / f"worker{i}.log" for i in range(n_workers)]
    procs = [start_worker(url, log, "--checkpoint-dir", tmp / "ckpt") for log in logs]
    codes = [p.wait(timeout=600) for p in procs]
    texts = [log.read_text() for log in logs]
    assert codes == [0] * n_workers, texts
    return load(url, fer_study.load_spec(spec).name), texts


def check_study_accounting(study: optuna.Study, texts: list[str], budget: int) -> None:
    trials = study.get_trials()
    states = collections.Counter(t.state for t in trials)
    assert states[TrialState.COMPLETE] + states[TrialState.PRUNED] == budget, states
    assert states[TrialState.RUNNING] == 0 and states[TrialState.WAITING] == 0
    # Whether the median rule prunes here depends on which trials finish first; test_the_median_rule_prunes pins it.
    for t in trials:
        if t.state == TrialState.PRUNED:
            assert any(f"trial {t.number} pruned: val accuracy" in text for text in texts)
    started = [int(n) for text in texts for n in re.findall(r"trial (\d+) started", text)]
    assert len(started) == len(set(started)), f"a trial ran twice: {sorted(started)}"
    for t in trials:
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
            assert t.user_attrs["worker"] and t.user_attrs["device"] == "cpu" and t.user_attrs["epochs_run"] >= 1
            assert t.user_attrs["seconds"] > 0
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        assert t.user_attrs["n_params"] > 0 and Path(t.user_attrs["checkpoint"]).exists()


def test_four_workers_share_one_study_then_export_train_evaluate(postgres, tmp_path, sample_csv):
    # On PostgreSQL, the storage of many machines; four workers on one SQLite file: tests/test_chaos.py.
    url = postgres.new_database()
    study, texts = run_parallel_study(url, sample_csv, tmp_path, 4)
    check_study_accounting(study, texts, budget=8)
    assert study.trials[0].params == {"batch_size": 128, "dropout": 0.2, "hidden_dim": 64, "lr": 1e-3, "weight_decay": 1e-6}

    status = fer_opt("status", "--storage", url).stdout
    assert "8/8 of the budget" in status and f"best: trial {study.best_trial.number}" in status
    assert "pg-test-secret" not in status

    best, best_model = tmp_path / "best.yaml", tmp_path / "best-trial.pt"
    fer_opt("export", "--storage", url, "-o", best, "--model", best_model)
    exported = load_config(best)
    assert exported.provenance["trial"] == study.best_trial.number
    assert exported.provenance["study_file"] == str(TINY)
    shipped = torch.load(best_model, weights_only=True)
    assert shipped["meta"]["provenance"]["trial"] == study.best_trial.number
    assert shipped["meta"]["val_accuracy"] == pytest.approx(study.best_value, abs=1e-6)
    assert shipped["meta"]["study_file_text"] == TINY.read_text()
    assert shipped["meta"]["trained"]["device"] == "cpu" and shipped["meta"]["trained"]["seconds"] > 0
    assert "pg-test-secret" not in repr(shipped["meta"])
    assert exported.provenance["val_accuracy"] == pytest.approx(study.best_value, abs=1e-6)
    for name, value in study.best_params.items():
        assert getattr(exported, name) == pytest.approx(value)
    n_complete = len(study.get_trials(states=(TrialState.COMPLETE,)))
    out = fer_opt("export", "--storage", url, "-o", tmp_path / "top.yaml", "--top", "3").stdout
    assert len(list(tmp_path.glob("top-*.yaml"))) == min(3, n_complete)
    assert (n_complete < 3) == ("complete trial(s)" in out)

    model = tmp_path / "final.pt"
    fer_opt("train", "--config", best, "--data", sample_csv, "--out", model, "--epochs", "1")
    assert '"accuracy"' in fer_opt("evaluate", "--model", model, "--data", sample_csv, "--json").stdout
    # The exported model is the trial's own best checkpoint: it scores exactly what the trial reported,
    # whatever precision the trial trained in (val is scored in fp32).
    report = json.loads(fer_opt("evaluate", "--model", best_model, "--data", sample_csv, "--json", "--precision", "fp32").stdout)
    assert report["accuracy"] == pytest.approx(study.best_value, abs=1e-6)


def test_sigkilled_workers_trial_is_failed_and_retried(tmp_path, sample_csv):
    spec = tmp_path / "slow.yaml"
    tiny_study(spec, train={"epochs": 3}, n_trials=2)  # killed after its first epoch
    url = f"sqlite:///{tmp_path}/study.db"
    fer_opt("create-study", "--config", spec, "--storage", url, "--data", sample_csv)
    victim = start_worker(url, tmp_path / "victim.log", held_after=1)
    wait_held(victim, tmp_path / "victim.log")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    study = load(url)
    killed = study.get_trials()[0]
    assert killed.state == TrialState.RUNNING, "SIGKILL leaves the trial RUNNING until a heartbeat check"
    assert killed.intermediate_values.keys() == {1}, "killed mid-trial, after epoch 1"

    rescuer = start_worker(url, tmp_path / "rescuer.log")
    assert rescuer.wait(timeout=300) == 0, (tmp_path / "rescuer.log").read_text()
    trials = study.get_trials()
    assert trials[0].state == TrialState.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retries) == 1 and retries[0].params == killed.params
    assert retries[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 2
    check_resumed_where_it_stopped(trials)


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_a_worker_whose_trial_was_failed_as_stale_drops_it_and_goes_on(tmp_path, sample_csv):
    """What a worker finds after losing the database for longer than the grace period:
    another worker has failed its trial as stale and re-queued it."""
    spec = tmp_path / "slow.yaml"
    tiny_study(spec, train={"epochs": 4}, n_trials=2)  # failed after its second epoch, found out after its third
    url = f"sqlite:///{tmp_path}/study.db"
    fer_opt("create-study", "--config", spec, "--storage", url, "--data", sample_csv)
    log = tmp_path / "w.log"
    proc = start_worker(url, log, "--checkpoint-dir", str(tmp_path / "ckpt"), held_after=2)
    wait_held(proc, log)
    study = load(url)
    [running] = study.get_trials(states=(TrialState.RUNNING,))
    assert running.intermediate_values.keys() == {1, 2}
    study._storage.set_trial_state_values(running._trial_id, TrialState.FAIL)  # as fail_stale_trials does
    fer_storage.open_storage(url, heartbeat=True).get_heartbeat_stale_trial_callback()(study, running)  # the workers' own retry
    release(log)
    assert proc.wait(timeout=300) == 0, log.read_text()
    assert f"trial {running.number} was failed as stale by another worker" in log.read_text()
    assert "Traceback" not in log.read_text()
    trials = study.get_trials()
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 2
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == running.number)
    assert retry.state in (TrialState.COMPLETE, TrialState.PRUNED) and retry.user_attrs["resumed_at_epoch"] >= 2
    assert check_resumed_where_it_stopped(trials) == [retry]


def test_sigterm_requeues_the_running_trial_and_exits_143(tmp_path, sample_csv):
    spec = tmp_path / "slow.yaml"
    tiny_study(spec, train={"epochs": 50})
    url = f"sqlite:///{tmp_path}/study.db"
    fer_opt("create-study", "--config", spec, "--storage", url, "--data", sample_csv)
    proc = start_worker(url, tmp_path / "w.log")
    study = load(url)
    wait_for(lambda: any(t.intermediate_values for t in study.get_trials()), 120, "a trial to report an epoch")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM, (tmp_path / "w.log").read_text()
    stopped, again = study.get_trials()
    assert stopped.state == TrialState.FAIL and again.state == TrialState.WAITING
    assert again.params == stopped.params and again.system_attrs["failed_trial"] == stopped.number
    log = (tmp_path / "w.log").read_text()
    assert "SIGTERM" in log and f"trial {stopped.number} was re-queued" in log


def _child_cmdlines(pid: int) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "stat").read_text().split()[3] == str(pid):
                found.append((proc / "cmdline").read_text().replace("\0", " "))
        except OSError:
            pass
    return found


def test_per_gpu_spawns_several_workers_from_one_command(tmp_path, sample_csv):
    url = f"sqlite:///{tmp_path}/study.db"
    spec = tiny_study(tmp_path / "four.yaml", n_trials=4, train={"epochs": 1})  # enough for both workers to start
    fer_opt("create-study", "--config", spec, "--storage", url, "--data", sample_csv)
    parent = subprocess.Popen([sys.executable, "-m", "fer_optuna.cli", "worker", "--storage", url, "--gpu", "cpu",
                               "--per-gpu", "2", "--checkpoint-dir", tmp_path / "ckpt"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    wait_for(lambda: len(_child_cmdlines(parent.pid)) >= 2, 60, "two worker processes")
    children = _child_cmdlines(parent.pid)
    assert all(url not in cmd for cmd in children), "the storage URL (and its password) must not be on a command line"
    out = parent.communicate(timeout=600)[0]
    assert parent.returncode == 0, out
    workers = set(re.findall(r"\[worker (\S+) cpu\]", out))
    assert len(workers) == 2
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in load(url).get_trials()) == 4


def test_per_gpu_auto_is_four_per_gpu_but_never_more_than_the_cores():
    from fer_optuna.search.worker import auto_per_device

    assert auto_per_device(["cpu"], cores=16) == 1
    assert auto_per_device(["0"], cores=16) == 4  # the best of 1/2/4 measured on an H200
    assert auto_per_device(["0", "1"], cores=6) == 3
    assert auto_per_device(["0", "1", "2", "3"], cores=2) == 1


def test_wandb_logs_each_trial_offline(tmp_path, sample_csv):
    spec = tmp_path / "two.yaml"
    tiny_study(spec, n_trials=2, train={"epochs": 1})
    url = f"sqlite:///{tmp_path}/study.db"
    fer_opt("create-study", "--config", spec, "--storage", url, "--data", sample_csv)
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"}
    proc = start_worker(url, tmp_path / "w.log", "--wandb", env=env)
    assert proc.wait(timeout=300) == 0, (tmp_path / "w.log").read_text()
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 2
    logged = b"".join(p.read_bytes() for r in runs for p in r.rglob("*.wandb"))
    assert b"tiny-trial-0" in logged and b"val/acc" in logged


def _in_process_study(tmp_path, sample_csv, enqueue):
    from fer_optuna.training import data
    from fer_optuna.search import worker

    url = f"sqlite:///{tmp_path}/s.db"
    created, _ = fer_study.create(TINY, url, data=str(sample_csv))
    for params in enqueue:
        created.enqueue_trial(params)
    study, spec = fer_study.load_study("tiny", fer_storage.open_storage(url))
    study.pruner = fer_study.make_pruner(spec)  # as worker.run sets it
    opts = worker.WorkerOptions(study="tiny", storage=url, device="cpu")
    objective = worker.Objective(study, spec, data.load(sample_csv), torch.device("cpu"), opts, log=lambda m: None)
    return study, objective


def test_out_of_memory_fails_only_that_trial_with_the_batch_size(tmp_path, sample_csv, monkeypatch):
    from fer_optuna.training import augment
    from fer_optuna.search import worker

    real = augment.augment

    def small_memory(x, cfg, gen):  # as if the device could not hold a batch of 128
        if len(x) >= 128:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(x, cfg, gen)

    monkeypatch.setattr(augment, "augment", small_memory)
    base = {"dropout": 0.2, "hidden_dim": 64, "lr": 1e-3, "weight_decay": 1e-6}
    study, objective = _in_process_study(tmp_path, sample_csv, [{**base, "batch_size": 128}, {**base, "batch_size": 32}])
    study.optimize(objective, n_trials=3, catch=(worker.TrialDropped,))
    oom, *rest = study.get_trials()[1:]
    assert oom.state == TrialState.FAIL and oom.user_attrs["fail_reason"] == "out of memory at batch_size 128 on cpu"
    assert rest[0].state == TrialState.COMPLETE, "the worker goes on after an OOM"


def test_the_median_rule_prunes_a_trial_below_the_median(tmp_path, sample_csv, monkeypatch):
    from fer_optuna.training import trainer
    from fer_optuna.search import worker

    curves = iter([[0.40, 0.50, 0.60], [0.42, 0.52, 0.62], [0.10, 0.10, 0.10]])  # the third is hopeless

    def scripted(cfg, data, *, on_epoch, **kwargs):
        curve = next(curves)
        for epoch, acc in enumerate(curve, 1):
            on_epoch(trainer.EpochStats(epoch, 1.0, acc, 1.0, acc, cfg.lr, 0.1))
        return trainer.TrainResult(max(curve), 3, 3, 0.3, 1000)

    monkeypatch.setattr(trainer, "train", scripted)
    study, objective = _in_process_study(tmp_path, sample_csv, [])
    study.optimize(objective, n_trials=3, catch=(worker.TrialDropped,))
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED]
    assert study.trials[2].intermediate_values == {1: 0.10}, "pruned at its first epoch below the median"


def test_a_trial_is_never_pruned_at_its_last_epoch(tmp_path, sample_csv, monkeypatch):
    from fer_optuna.training import trainer
    from fer_optuna.search import worker

    # The third is above the median until its last epoch, below it there: stopping it then would save nothing.
    curves = iter([[0.40, 0.50, 0.60], [0.42, 0.52, 0.62], [0.45, 0.55, 0.10]])

    def scripted(cfg, data, *, on_epoch, **kwargs):
        curve = next(curves)
        for epoch, acc in enumerate(curve, 1):
            on_epoch(trainer.EpochStats(epoch, 1.0, acc, 1.0, acc, cfg.lr, 0.1))
        return trainer.TrainResult(max(curve), curve.index(max(curve)) + 1, 3, 0.3, 1000)

    monkeypatch.setattr(trainer, "train", scripted)
    study, objective = _in_process_study(tmp_path, sample_csv, [])
    study.optimize(objective, n_trials=3, catch=(worker.TrialDropped,))
    last = study.trials[2]
    assert last.state == TrialState.COMPLETE and last.value == 0.55 and len(last.intermediate_values) == 3


def test_nan_loss_fails_the_trial_with_the_reason(tmp_path, sample_csv, monkeypatch):
    from fer_optuna.search import worker

    real = torch.nn.CrossEntropyLoss.forward
    monkeypatch.setattr(torch.nn.CrossEntropyLoss, "forward", lambda self, a, b: real(self, a, b) * float("inf"))
    study, objective = _in_process_study(tmp_path, sample_csv, [])
    study.optimize(objective, n_trials=2, catch=(worker.TrialDropped,))
    for t in study.get_trials():
        assert t.state == TrialState.FAIL and "training loss became" in t.user_attrs["fail_reason"]


def test_the_main_job_runs_a_study_exports_and_trains(tmp_path, sample_csv):
    url = f"sqlite:///{tmp_path}/main.db"
    # 4 trials (the enqueued one, 2 random, one drawn by TPE: n_startup_trials is 3) on a proxy of 200 images;
    # the final fit takes them all, for 4 epochs.
    spec = tiny_study(tmp_path / "tiny.yaml", n_trials=4, train={"train_subset": 200},
                      final={"train_subset": 0, "epochs": 4})
    args = ("run", "--data", sample_csv, "--storage", url, "--study-file", spec, "--gpu", "cpu", "--port", "0",
            "--out", tmp_path / "runs", "--checkpoint-dir", tmp_path / "ckpt")
    out = fer_opt(*args).stdout
    assert "study tiny created" in out and "4/4 of the budget" in out and "final model: val (PublicTest) accuracy" in out
    assert "what the search bought" in out and "original config  trial   0" in out
    assert re.search(r"trial \d+ epoch 3/3: val accuracy", out), "progress of every epoch"
    final = load_config(tmp_path / "runs" / "best.yaml")
    assert final.provenance["study"] == "tiny" and (final.train_subset, final.epochs) == (0, 4)
    assert "epoch   4/4" in out and "epoch   5/" not in out.split("training the final model")[1]
    best = tmp_path / "runs" / "best.pt"
    uninterrupted = checkpoints.read_checkpoint(best)["state_dict"]
    assert not (tmp_path / "runs" / "best.state.pt").exists(), "a finished fit leaves no state behind"

    # Ctrl-C in the final fit of the same command: one line, exit 130, and the next run resumes it.
    stopped = fer_opt_interrupted(*args, after="epoch   1/4")
    assert "study tiny resumed" in stopped.stdout and "budget reached" in stopped.stdout
    assert stopped.returncode == 130 and "Traceback" not in stopped.stderr and "Aborted" not in stopped.stderr
    [line] = stopped.stderr.strip().splitlines()
    done = int(re.fullmatch(r"error: final fit stopped by SIGINT after epoch (\d) of 4; run the same command again "
                            r"to resume", line).group(1))
    assert 1 <= done < 4 and (tmp_path / "runs" / "best.state.pt").exists()
    resumed = fer_opt(*args).stdout
    assert f"resuming after epoch {done} of 4" in resumed and f"epoch {done:3d}/4" not in resumed.split("resuming")[1]
    resumed_weights = checkpoints.read_checkpoint(best)["state_dict"]
    assert all(torch.equal(resumed_weights[k], uninterrupted[k]) for k in uninterrupted), "the same model as without the stop"

    # From a fresh storage the same command draws the same trials: a user can reproduce the main job.
    # (Stopped as the final fit starts: the trials are all drawn by then.)
    url2 = f"sqlite:///{tmp_path}/main2.db"
    again = fer_opt_interrupted("run", "--data", sample_csv, "--storage", url2, "--study-file", spec, "--gpu", "cpu",
                                "--port", "0", "--out", tmp_path / "runs2", "--checkpoint-dir", tmp_path / "ckpt2",
                                after="training the final model")
    assert again.returncode == 130 and "4/4 of the budget" in again.stdout, again.stdout + again.stderr
    assert [t.params for t in load(url).trials] == [t.params for t in load(url2).trials]
