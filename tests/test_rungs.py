"""Rungs: a study re-runs its best configurations and its baseline on more data (search/rungs.py)."""

import json
import math
import re
import signal

import optuna
import pytest
import torch
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from conftest import fer_opt, tiny_study
from fer_optuna.search import rungs
from test_workers import check_resumed_where_it_stopped, start_worker, wait_for

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def _trial(number, value, baseline=False, state=TrialState.COMPLETE, infeasible=False):
    t = create_trial(state=state, value=value if state == TrialState.COMPLETE else None, params={"lr": 0.1 + number},
                     distributions={"lr": FloatDistribution(0.0, 100.0)}, user_attrs={rungs.BASELINE: True} if baseline else {},
                     system_attrs={"constraints": [1.0 if infeasible else 0.0]})
    t.number = number
    return t


def test_promotion_keeps_the_best_ceil_n_over_eta_feasible_first_and_always_the_baseline():
    # 7 complete, eta 3: the best 3 of the feasible (not trial 1, the most accurate); the baseline (trial 0, the worst)
    trials = [_trial(0, 0.1, baseline=True), _trial(1, 0.9, infeasible=True)] + [_trial(n, n / 10) for n in range(2, 7)]
    trials.append(_trial(7, None, state=TrialState.PRUNED))
    assert [t.number for t in rungs.promoted(trials, 3)] == [0, 4, 5, 6]
    # feasibility first, then accuracy: an infeasible trial only fills places the feasible ones leave
    few = [_trial(1, 0.9, infeasible=True), _trial(2, 0.8, infeasible=True), _trial(3, 0.1)]
    assert [t.number for t in rungs.promoted(few, 2)] == [1, 3]
    # a baseline killed and retried goes up as its complete attempt
    failed = _trial(0, None, baseline=True, state=TrialState.FAIL)
    retry = _trial(8, 0.1, baseline=True)
    retry.params = failed.params
    assert [t.number for t in rungs.promoted([failed, *trials[1:], retry], 3)] == [4, 5, 6, 8]
    # fewer complete trials than eta: at least one goes up
    assert [t.number for t in rungs.promoted([_trial(0, 0.1, baseline=True), _trial(1, 0.5)], 3)] == [0, 1]


def test_spearman_matches_its_definition_with_ties():
    assert rungs.spearman([(1, 1), (2, 2), (3, 3)]) == pytest.approx(1.0)
    assert rungs.spearman([(1, 3), (2, 2), (3, 1)]) == pytest.approx(-1.0)
    # ties take their mean rank: ranks (1.5, 1.5, 3, 4) against (1, 3, 2, 4), Pearson of the ranks
    assert rungs.spearman([(0.2, 0.1), (0.2, 0.3), (0.5, 0.2), (0.9, 0.4)]) == pytest.approx(0.6 / math.sqrt(0.9))
    assert rungs.spearman([(1, 1), (2, 2)]) is None and rungs.spearman([(1, 1), (1, 2), (1, 3)]) is None


@pytest.mark.parametrize("change, field", [
    ({"rungs": [{"train_subset": 200}, {"train_subset": 100}]}, "rungs[1].train_subset"),  # fidelity falls
    ({"rungs": [{"train_subset": 200}, {"train_subset": 200}]}, "rungs[1].train_subset/val_subset/epochs"),
    ({"rungs": [{"train_subset": 200}, {"train_subset": 0}], "eta": 1}, "eta"),
    ({"rungs": [{"train_subset": 200}, {"lr": 0.01}]}, "rungs[1].lr"),  # searched
    ({"rungs": [{"train_subset": 200}, {"train_subet": 0}]}, "rungs[1].train_subet"),  # no such field
    ({"rungs": [{"train_subset": 200}, {"train_subset": 0}],
      "objectives": [{"val_accuracy": "maximize"}, {"latency_ms": "minimize"}]}, "rungs"),  # refused, docs/studies.md
])
def test_a_bad_rung_spec_is_one_line_naming_the_file_and_field_and_creates_nothing(tmp_path, sample_csv, change, field):
    spec = tiny_study(tmp_path / "bad.yaml", **change)
    db = tmp_path / "study.db"
    proc = fer_opt("create-study", "--config", spec, "--storage", f"sqlite:///{db}", "--data", sample_csv, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert str(spec) in line and f"{field}:" in line, line
    assert not db.exists() or optuna.get_all_study_names(f"sqlite:///{db}") == []


def _expected_promotion(trials, eta):
    """The rule, written again: the best ceil(n/eta) complete trials by val accuracy (earlier first on a tie), and the
    baseline."""
    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: (-t.values[0], t.number))
    best = {t.number for t in complete[:max(1, math.ceil(len(complete) / eta))]}
    baseline = {t.number for t in trials if t.state == TrialState.COMPLETE and t.user_attrs.get(rungs.BASELINE)}
    return best | baseline


@pytest.mark.slow
def test_three_workers_promote_once_retry_a_killed_rung_1_trial_and_export_its_winner(tmp_path, sample_csv):
    spec = tiny_study(tmp_path / "rungs.yaml", n_trials=5, train={"epochs": 1}, eta=3,
                      rungs=[{"train_subset": 100, "val_subset": 60}, {"train_subset": 0, "val_subset": 0, "epochs": 3}])
    url = f"sqlite:///{tmp_path}/study.db"
    fer_opt("create-study", "--config", spec, "--storage", url, "--data", sample_csv)
    logs = [tmp_path / f"worker{i}.log" for i in range(3)]
    procs = [start_worker(url, log, "--checkpoint-dir", tmp_path / "ckpt") for log in logs]
    rung1 = []

    def a_rung_1_trial_has_an_epoch():
        if "tiny/rung-1" in optuna.get_all_study_names(url):
            rung1[:] = [t for t in optuna.load_study(study_name="tiny/rung-1", storage=url).get_trials()
                        if t.state == TrialState.RUNNING and t.intermediate_values]
        return bool(rung1)

    wait_for(a_rung_1_trial_has_an_epoch, 300, "a rung-1 trial to report an epoch")
    victim = next(p for p in procs if rung1[0].user_attrs["worker"].endswith(f":{p.pid}"))
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    for p, log in zip(procs, logs):
        assert p.wait(timeout=300) in (0, -signal.SIGKILL), log.read_text()
    texts = [log.read_text() for log in logs]

    root = optuna.load_study(study_name="tiny", storage=url)
    below = root.get_trials()
    assert sum(t.state in FINISHED for t in below) == 5 and below[0].user_attrs[rungs.BASELINE]
    assert not any(t.state == TrialState.PRUNED and t.user_attrs.get(rungs.BASELINE) for t in below)
    up = optuna.load_study(study_name="tiny/rung-1", storage=url)
    asked = [t for t in up.get_trials() if rungs.PROMOTED_FROM not in t.user_attrs]  # asked as the last one was taken
    assert all(t.state == TrialState.FAIL and not t.intermediate_values and "runs only the configurations promoted"
               in t.user_attrs["fail_reason"] for t in asked)
    trials = [t for t in up.get_trials() if rungs.PROMOTED_FROM in t.user_attrs]
    expected = _expected_promotion(below, 3)
    assert sorted(up.user_attrs[rungs.ATTR_PROMOTED]) == sorted(expected)
    assert sum("rung 1: promoted trials" in text for text in texts) == 1, "promoted more than once"
    # each promoted configuration ran once at rung 1, from the start, at rung 1's fidelity; the killed one again
    firsts = [t for t in trials if "failed_trial" not in t.system_attrs]
    assert sorted(t.user_attrs[rungs.PROMOTED_FROM] for t in firsts) == sorted(expected)
    for t in trials:
        assert t.params == below[t.user_attrs[rungs.PROMOTED_FROM]].params
    killed = next(t for t in trials if t.number == rung1[0].number)
    assert killed.state == TrialState.FAIL
    [retry] = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert retry.state in FINISHED and retry.params == killed.params
    assert retry.user_attrs["resumed_from_trial"] == killed.number and retry.user_attrs["resumed_at_epoch"] >= 1
    assert retry.user_attrs.get(rungs.BASELINE) == killed.user_attrs.get(rungs.BASELINE)
    check_resumed_where_it_stopped(trials)
    done = [t for t in trials if t.state in FINISHED]
    assert sorted(t.user_attrs[rungs.PROMOTED_FROM] for t in done) == sorted(expected)
    assert all(max(t.intermediate_values) == 3 for t in done if t.state == TrialState.COMPLETE)
    base = next(t for t in done if t.user_attrs.get(rungs.BASELINE))
    assert base.state == TrialState.COMPLETE  # never pruned
    assert up.user_attrs[rungs.ATTR_VAL_IMAGES] == 150 and root.user_attrs[rungs.ATTR_VAL_IMAGES] == 60

    # the model is rung 1's best trial's own checkpoint
    model = tmp_path / "best.pt"
    out = fer_opt("export", "--storage", url, "-o", tmp_path / "best.yaml", "--model", model).stdout
    winner = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: (t.values[0], -t.number))
    assert "rung 1 of 1" in out and "tiny/rung-1" in out
    saved = torch.load(model, weights_only=True)["meta"]["provenance"]
    assert (saved["study"], saved["rung"], saved["trial"]) == ("tiny/rung-1", 1, winner.number)
    assert saved["val_accuracy"] == pytest.approx(winner.values[0], abs=1e-6)

    # the main job on the drained study: nothing left to run, and the model is that checkpoint, not refitted
    runs = tmp_path / "runs"
    out = fer_opt("run", "--data", sample_csv, "--study-file", spec, "--storage", url, "--gpu", "cpu", "--port", "0",
                  "--out", runs, "--checkpoint-dir", tmp_path / "ckpt").stdout
    assert "rung 1 drained" in out and "not refitted" in out and "rank correlation with rung 0" in out
    assert torch.load(runs / "best.pt", weights_only=True)["meta"]["provenance"]["trial"] == winner.number

    # an ensemble of rung 1's best trials, and the report's rungs
    out = fer_opt("ensemble", "--storage", url, "--top", "2", "-o", tmp_path / "ensemble.pt", "--device", "cpu").stdout
    ranked = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: -t.values[0])
    assert "rung 1 of 1" in out and f"trials {', '.join(str(t.number) for t in ranked[:2])} " in out
    fer_opt("report", "--storage", url, "-o", tmp_path / "report.html", "--data", "none")
    assert "What each rung bought" in (tmp_path / "report.html").read_text()
    copy = f"sqlite:///{tmp_path}/copy.db"
    fer_opt("storage", "copy", "--from", url, "--to", copy)
    assert sorted(optuna.get_all_study_names(copy)) == ["tiny", "tiny/rung-1"]

    status = fer_opt("status", "--storage", url).stdout
    assert re.search(r"rung 0 \(tiny\).*\n    best trial \d+: 0\.\d{4} ± 0\.\d{4}; baseline trial 0: 0\.\d{4} ± 0\.\d{4}; "
                     r"[+-]\d+\.\d points, (within|beyond) noise", status), status
    assert re.search(r"rung 1 \(tiny/rung-1\).*\n    best trial \d+: .* ± .*\n    rank correlation with rung 0: "
                     rf"Spearman \S+ over {len(expected)} configurations", status), status
    ladder = json.loads(fer_opt("status", "--storage", url, "--json").stdout)["rungs"]["ladder"]
    assert [r["rung"] for r in ladder] == [0, 1] and ladder[1]["pairs"] == len(expected)
    assert ladder[1]["best"]["stderr"] == pytest.approx(math.sqrt(winner.values[0] * (1 - winner.values[0]) / 150))


def _drained_rung_0(tmp_path, sample_csv, url):
    """A two-rung study (eta 2) whose rung 0 is drained: the baseline and three trials, scored by hand."""
    from fer_optuna.search import study as fer_study

    path = tiny_study(tmp_path / "rungs.yaml", rungs=[{"train_subset": 100}, {"train_subset": 0}], eta=2)
    root, _ = fer_study.create(path, url, data=str(sample_csv))
    spec = fer_study.load_spec(path)
    for value in (0.3, 0.5, 0.4, 0.2):  # the enqueued baseline first
        trial = root.ask()
        fer_study.suggest(trial, spec.space)
        root.tell(trial, value)
    return root, spec


def test_a_promotion_left_halfway_is_finished_by_a_waiting_worker_and_a_second_copy_is_refused(tmp_path, sample_csv):
    from fer_optuna.search import study as fer_study

    url = f"sqlite:///{tmp_path}/study.db"
    root, spec = _drained_rung_0(tmp_path, sample_csv, url)
    optuna.create_study(study_name="tiny/rung-1", storage=url)  # a promoter that died before its first enqueue
    said = []
    study, at_rung = rungs.open_rung(root, spec, 1, grace=0.2, log=said.append, wait=0.05)
    assert "stopped halfway" in said[0]
    assert study.user_attrs[rungs.ATTR_PROMOTED] == [0, 1, 2] and at_rung.n_trials == 3  # the best 2 of 4, the baseline
    assert at_rung.train.train_subset == 0 and study.user_attrs[fer_study.ATTR_DATA] == root.user_attrs[fer_study.ATTR_DATA]
    study.enqueue_trial(root.trials[1].params, user_attrs={rungs.PROMOTED_FROM: 1})  # enqueued twice
    reasons = [rungs.refusal(study, study.ask(), 1) for _ in range(5)]
    assert reasons[:3] == [None, None, None]
    assert reasons[3] == "trial 1 of rung 0 already runs at rung 1 as trial 1"
    assert reasons[4] == "rung 1 runs only the configurations promoted to it"
    assert fer_study.single_study_name(fer_study.open_storage(url)) == "tiny"
    with pytest.raises(fer_study.FerOptError, match="rung 1 of study 'tiny'"):
        fer_study.load_study("tiny/rung-1", fer_study.open_storage(url))


def test_the_baseline_is_never_pruned(tmp_path, sample_csv, monkeypatch):
    from fer_optuna.options import Settings
    from fer_optuna.search import study as fer_study
    from fer_optuna.search import worker
    from fer_optuna.training import data, trainer

    def hopeless(cfg, data, *, on_epoch, **kwargs):
        for epoch in (1, 2, 3):
            on_epoch(trainer.EpochStats(epoch, 1.0, 0.1, 1.0, 0.1, cfg.lr, 0.1))
        return trainer.TrainResult(0.1, 1, 3, 0.3, 1000)

    monkeypatch.setattr(trainer, "train", hopeless)
    path = tiny_study(tmp_path / "rungs.yaml", rungs=[{"train_subset": 100}, {"train_subset": 0}])
    url = f"sqlite:///{tmp_path}/study.db"
    study, _ = fer_study.create(path, url, data=str(sample_csv))  # the baseline waits as trial 0
    spec = fer_study.load_spec(path)
    for value in (0.5, 0.6):  # two trials far above it at every epoch: the median rule would prune it
        study.add_trial(create_trial(value=value, params={}, distributions={},
                                     intermediate_values={1: value, 2: value, 3: value}))
    study.pruner = fer_study.make_pruner(spec)
    opts = worker.WorkerOptions(study="tiny", storage=url, device="cpu", settings=Settings())
    objective = worker.Objective(study, spec, data.load(sample_csv), torch.device("cpu"), opts, log=lambda m: None)
    study.optimize(objective, n_trials=1, catch=(worker.TrialDropped,))
    baseline = study.trials[0]
    assert baseline.user_attrs[rungs.BASELINE] and baseline.state == TrialState.COMPLETE
    assert baseline.intermediate_values == {1: 0.1, 2: 0.1, 3: 0.1}


@pytest.mark.parametrize("storage_url", ["sqlite", "postgres"], indirect=True)
def test_workers_reaching_a_drained_rung_at_once_promote_it_once(tmp_path, sample_csv, storage_url):
    """Four processes' workers finish rung 0 at the same moment: one creates rung 1's study and promotes, the others
    wait for its mark; each configuration is queued once, on SQLite and PostgreSQL alike."""
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    from fer_optuna.search import study as fer_study

    root, spec = _drained_rung_0(tmp_path, sample_csv, storage_url)
    start, said = Barrier(4), []

    def reach_rung_1(_):
        mine = optuna.load_study(study_name="tiny", storage=fer_study.open_storage(storage_url))  # a storage each
        start.wait()
        study, _ = rungs.open_rung(mine, spec, 1, grace=60, log=said.append, wait=0.05)
        return study.user_attrs[rungs.ATTR_PROMOTED]

    with ThreadPoolExecutor(4) as pool:
        seen = list(pool.map(reach_rung_1, range(4)))
    assert [line for line in said if "promoted trials" in line] == [said[0]], said
    assert seen == [[0, 1, 2]] * 4, "every worker sees the one promotion: the best 2 of 4 and the baseline"
    queued = optuna.load_study(study_name="tiny/rung-1", storage=storage_url).get_trials()
    assert sorted(t.user_attrs[rungs.PROMOTED_FROM] for t in queued) == [0, 1, 2]
