"""Searching under a deployment budget: cost measures, constraints, multi-objective studies, --pick."""

import json
import os
import shutil
import time

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState
from torch import nn

from conftest import ROOT, fer_opt, tiny_study
from fer_optuna.errors import FerOptError
from fer_optuna.search import budget
from fer_optuna.search import study as fer_study
from fer_optuna.training import costs, portable
from fer_optuna.training.config import TrainConfig
from test_dashboard import _browser, _chromium, assert_painted, start_dashboard, stop

# cnn3's classifier is hidden_dim wide: 64 gives 0.39M parameters, 2048 gives 9.5M
SMALL, LARGE = 64, 2048


def test_macs_are_counted_from_the_layers():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten(), nn.Linear(2 * 48 * 48, 3))
    assert costs.count_macs(model) == 48 * 48 * 2 * 9 + 2 * 48 * 48 * 3


def test_every_measure_of_a_model():
    small, large = (costs.measure(TrainConfig(model="cnn3", hidden_dim=h), 7) for h in (SMALL, LARGE))
    assert set(small) == set(costs.MEASURES)
    assert small["params"] < 500_000 < 9_000_000 < large["params"]
    assert 0 < small["latency_ms"] < large["latency_ms"] and small["latency_ms"] < small["latency_b32_ms"]
    assert small["size_mb"] == pytest.approx(small["params"] * 4 / 1e6, rel=0.02)
    assert costs.architecture(TrainConfig(lr=0.1, dropout=0.4), 7) == costs.architecture(TrainConfig(), 7)


def test_a_trial_records_the_costs_of_the_model_it_trains_with_the_datas_classes(tmp_path, sample_csv):
    """FER+'s eight classes (or a folder's N) make another head: other costs, under another key."""
    import dataclasses

    import torch
    from fer_optuna.search import storage as fer_storage, worker
    from fer_optuna.training import data
    from fer_optuna.training.models import build_model, count_parameters
    from test_labels import FERPLUS

    url = f"sqlite:///{tmp_path}/s.db"
    fer_study.create(tiny_study(tmp_path / "s.yaml"), url, data=str(sample_csv))
    study, spec = fer_study.load_study("tiny", fer_storage.open_storage(url))
    eight = dataclasses.replace(data.load(sample_csv), classes=FERPLUS)
    objective = worker.Objective(study, spec, eight, torch.device("cpu"), worker.WorkerOptions(study="tiny", storage=url, device="cpu"),
                                 log=lambda m: None)
    cfg = spec.train.replace(model="cnn3", hidden_dim=SMALL)
    trial = study.ask()
    objective._costs(trial, cfg)
    recorded = study.get_trials()[trial.number].user_attrs
    assert recorded["params"] == count_parameters(build_model("cnn3", 0.0, SMALL, cfg.width, 8))
    assert recorded["params"] == count_parameters(build_model("cnn3", 0.0, SMALL, cfg.width, 7)) + SMALL + 1
    assert recorded["architecture"] == costs.architecture(cfg, 8) != costs.architecture(cfg, 7)


def test_latency_counts_this_threads_cpu_time_not_a_busy_hosts_wall_time(monkeypatch):
    import onnxruntime

    pause = 0.1

    class OffTheCPU(onnxruntime.InferenceSession):
        def run(self, *args, **kwargs):
            time.sleep(pause)  # the thread waits, as it would for a core on a busy host
            return super().run(*args, **kwargs)

    graph = portable.onnx_bytes(costs.build_model("cnn3", 0.2, SMALL, 1.0), TrainConfig())
    monkeypatch.setattr(onnxruntime, "InferenceSession", OffTheCPU)
    runs = costs.latency_ms(graph, 8, min_runs=5, min_seconds=0)
    # a wall-clock figure would count every pause
    assert len(runs) == 5 and max(runs) < 1000 * pause / 2, runs


@pytest.mark.parametrize("changes, message", [
    ({"constraints": {"latency": {"max": 3}}}, "constraints: 'latency' is not a measure; choose from params, macs"),
    ({"constraints": {"params": 3}}, "constraints.params: expected {max: NUMBER}"),
    ({"objectives": [{"val_accuracy": "minimize"}]}, "must be a list that starts with 'val_accuracy: maximize'"),
    ({"objectives": [{"val_accuracy": "maximize"}, {"latency_ms": "maximize"}]}, "latency_ms can only be minimized"),
    ({"objectives": [{"val_accuracy": "maximize"}, {"speed": "minimize"}]}, "objectives: 'speed' is not a measure"),
    ({"objectives": [{"val_accuracy": "maximize"}, {"latency_ms": "minimize"}]},
     "median cannot prune a multi-objective study"),
])
def test_bad_constraints_and_objectives_are_one_line_naming_the_key(tmp_path, changes, message):
    with pytest.raises(FerOptError) as e:
        fer_study.load_spec(tiny_study(tmp_path / "s.yaml", **changes))
    assert message in str(e.value) and "\n" not in str(e.value)


def _trial(value, latency, constraint=None):
    trial = optuna.trial.create_trial(state=TrialState.COMPLETE, value=value,
                                      user_attrs={"latency_ms": latency, "params": 1000})
    if constraint is not None:
        trial.set_constraint("latency_ms", constraint)
    return trial


def test_the_best_is_the_most_accurate_feasible_trial_and_pick_chooses_by_rule():
    study = optuna.create_study(direction="maximize")
    for t in (_trial(0.60, 4.0, 3.0), _trial(0.55, 0.9, -0.1), _trial(0.50, 0.5, -0.5)):
        study.add_trial(t)
    assert [t.values[0] for t in budget.ranked(study)] == [0.55, 0.50]
    assert budget.pick(study, "latency_ms<=0.6").values[0] == 0.50
    assert budget.pick(study, "latency_ms<1, val_accuracy>=0.5").values[0] == 0.55
    with pytest.raises(FerOptError, match=r"no complete feasible trial keeps to it \(latency_ms runs 0.5 to 0.9\)"):
        budget.pick(study, "latency_ms<=0.1")
    with pytest.raises(FerOptError, match="'fps' is not a measure; choose from val_accuracy, params"):
        budget.pick(study, "fps>=30")
    with pytest.raises(FerOptError, match="write MEASURE<=NUMBER"):
        budget.pick(study, "latency_ms=3")


@pytest.mark.slow
def test_a_constrained_study_skips_infeasible_trials_and_exports_the_best_feasible(tmp_path, sample_csv):
    # On SQLite only: a constraint is stored as a trial system attribute, a write that every worker test on
    # PostgreSQL makes too (the retry records, the two-objective test below).
    storage_url = f"sqlite:///{tmp_path}/study.db"
    spec = tiny_study(tmp_path / "c.yaml", n_trials=6, search_space={
        "hidden_dim": {"type": "categorical", "choices": [SMALL, LARGE]},
        "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
        constraints={"params": {"max": 2_000_000}}, enqueue=[{"hidden_dim": LARGE, "lr": 1e-3}])
    fer_opt("create-study", "--config", spec, "--storage", storage_url, "--data", sample_csv)
    started = time.monotonic()
    fer_opt("worker", "--storage", storage_url, "--gpu", "cpu", "--threads", "1", "--checkpoint-dir", tmp_path / "ckpt")
    study = optuna.load_study(study_name="tiny", storage=storage_url)
    trials = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))  # pruning still works
    infeasible = [t for t in trials if t.params["hidden_dim"] == LARGE]
    assert len(trials) == 6 and infeasible, "the enqueued large model at least"
    for t in infeasible:  # complete, infeasible, never trained
        assert t.state == TrialState.COMPLETE and t.constraints["params"] > 0 and "epochs_run" not in t.user_attrs
        assert t.user_attrs["infeasible"].startswith("params 9.5")
    feasible = [t for t in trials if t.params["hidden_dim"] == SMALL]
    assert all(t.constraints["params"] <= 0 and t.user_attrs["epochs_run"] >= 1 for t in feasible)
    assert all(t.user_attrs["latency_ms"] > 0 and t.user_attrs["macs"] > 0 for t in trials)
    best = max((t for t in feasible if t.state == TrialState.COMPLETE), key=lambda t: t.value)

    status = fer_opt("status", "--storage", storage_url).stdout
    assert f"{len(infeasible)} complete trial(s) broke them" in status
    assert f"best feasible: trial {best.number}, val accuracy {best.value:.4f}" in status
    fer_opt("export", "--storage", storage_url, "-o", tmp_path / "best.yaml")
    exported = (tmp_path / "best.yaml").read_text()
    assert f"# best trial {best.number} of study tiny" in exported and f"hidden_dim: {SMALL}" in exported
    assert time.monotonic() - started < 300


@pytest.mark.slow
def test_a_two_objective_study_prunes_shows_its_front_and_export_picks_from_it(storage_url, tmp_path, sample_csv):
    """Pruned by pareto-median: the large model is below the small one at epoch 1. TPE samples the last trial
    from a study that holds that pruned trial."""
    spec = tiny_study(tmp_path / "m.yaml", n_trials=3, train={"epochs": 2}, search_space={
        "hidden_dim": {"type": "categorical", "choices": [SMALL, LARGE]},
        "lr": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True}},
        objectives=[{"val_accuracy": "maximize"}, {"latency_ms": "minimize"}],
        pruner={"type": "pareto-median", "n_startup_trials": 1, "n_warmup_steps": 1},
        sampler={"type": "tpe", "seed": 0, "n_startup_trials": 2},
        enqueue=[{"hidden_dim": SMALL, "lr": 3e-4}, {"hidden_dim": LARGE, "lr": 1e-3}])
    fer_opt("create-study", "--config", spec, "--storage", storage_url, "--data", sample_csv)
    worker = ("worker", "--storage", storage_url, "--gpu", "cpu", "--threads", "1", "--checkpoint-dir", tmp_path / "ckpt")
    fer_opt(*worker, "--n-trials", "1")
    study = optuna.load_study(study_name="tiny", storage=storage_url)
    # What epoch 1 scores varies with the CPU: the small trial's is set above anything a trial can score, so
    # that the large one, which costs more, is below it whatever it learnt.
    with sqlalchemy.create_engine(storage_url).begin() as db:
        db.execute(sqlalchemy.text("UPDATE trial_intermediate_values SET intermediate_value = 1.0 "
                                   "WHERE trial_id = :trial AND step = 1"), {"trial": study.trials[0]._trial_id})
    fer_opt(*worker)
    assert study.metric_names == ["val_accuracy", "latency_ms"]
    trials = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(trials) == 3 == len(study.trials), "the budget, exactly"
    large = trials[1]
    assert large.state == TrialState.PRUNED and list(large.intermediate_values) == [1] and large.values is None
    assert all(list(t.intermediate_values) == [1, 2] for t in trials if t.state == TrialState.COMPLETE)
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    front = study.best_trials
    info = json.loads(fer_opt("status", "--storage", storage_url, "--json").stdout)
    assert sorted(r["number"] for r in info["front"]) == sorted(t.number for t in front)
    assert info["pruning"] == {"pruner": "pareto-median", "trials": 3, "pruned": len(pruned),
                               "epochs_run": 6 - len(pruned), "epochs_saved": len(pruned)}
    text = fer_opt("status", "--storage", storage_url).stdout
    print(text)
    assert f"pareto front ({len(front)} trials):" in text and "val_accuracy      latency_ms" in text
    assert f"pruner pareto-median: stopped {len(pruned)} of 3 trials early" in text
    if storage_url.startswith("postgresql"):
        return  # the rest reads the study the same way whatever the storage
    fastest = min(front, key=lambda t: t.values[1])
    out = fer_opt("export", "--storage", storage_url, "-o", tmp_path / "fast.yaml", "--model", tmp_path / "fast.pt",
                  "--pick", f"latency_ms<={fastest.values[1]}").stdout
    assert f"picked trial {fastest.number}" in out and (tmp_path / "fast.pt").stat().st_size > 100_000
    assert f"hidden_dim: {SMALL}" in (tmp_path / "fast.yaml").read_text()
    refused = fer_opt("export", "--storage", storage_url, "--pick", "latency_ms<=0.001", check=False)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "loosen the rule" in refused.stderr
    fer_opt("report", "--storage", storage_url, "-o", tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    assert "Pareto front: no trial beats these on every objective" in page and "Intermediate values" in page
    assert f"pruner pareto-median: stopped {len(pruned)} of 3 trials early" in page


@pytest.mark.slow
def test_the_dashboard_shows_a_two_objective_studys_pareto_front(tmp_path):
    chromium = _chromium()
    spec = tiny_study(tmp_path / "m.yaml", objectives=[{"val_accuracy": "maximize"}, {"latency_ms": "minimize"}],
                      pruner={"type": "none"})
    url = f"sqlite:///{tmp_path}/study.db"
    fer_opt("create-study", "--config", spec, "--storage", url, "--data", ROOT / "README.md")
    study = optuna.load_study(study_name="tiny", storage=url)
    for accuracy, latency in ((0.41, 0.6), (0.52, 2.1), (0.47, 0.7), (0.39, 0.9)):  # the last is dominated
        trial = study.ask()
        trial.suggest_categorical("hidden_dim", [64, 128])
        study.tell(trial, [accuracy, latency])
    server, port = start_dashboard(tmp_path / "dashboard.log", "--storage", url)
    try:
        page = f"http://127.0.0.1:{port}/dashboard/studies/{study._study_id}"
        for _ in range(3):  # a JavaScript app: a slow first start may catch it still loading
            dom = _browser(chromium, tmp_path, "--dump-dom", page).stdout
            if "Pareto Front" in dom:
                break
        assert "Pareto Front" in dom and "val_accuracy" in dom and "latency_ms" in dom, dom[-2000:]
        shot = tmp_path / "pareto.png"
        _browser(chromium, tmp_path, f"--screenshot={shot}", page)
        assert_painted(shot)
        if keep := os.environ.get("FER_OPT_KEEP_PARETO_SCREENSHOT"):
            shutil.copy(shot, keep)
    finally:
        stop(server)
