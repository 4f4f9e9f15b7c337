"""Pruning a two-objective study: the pareto-median rule, the reports it reads, what TPE makes of a pruned trial."""

import optuna
import pytest
from optuna.trial import TrialState

from conftest import tiny_study
from fer_optuna.errors import FerOptError
from fer_optuna.search import optuna_private, pruners
from fer_optuna.search import study as fer_study
from fer_optuna.search.storage import open_storage

TWO = [{"val_accuracy": "maximize"}, {"latency_ms": "minimize"}]


def _study(storage=None, **pruner) -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize"], storage=storage)
    study.pruner = pruners.ParetoMedianPruner(("latency_ms",), epochs=3, **{"n_startup_trials": 2, **pruner})
    return study


def _finished(study, latency, curve, state=TrialState.COMPLETE):
    study.add_trial(optuna.trial.create_trial(
        state=state, values=[max(curve), latency] if state == TrialState.COMPLETE else None,
        intermediate_values=dict(enumerate(curve, start=1)), user_attrs={"latency_ms": latency}))


def _running(study, latency, curve) -> optuna.Trial:
    """A trial as the worker runs it: costs recorded before training, then one report per epoch."""
    trial = study.ask()
    trial.set_user_attr("latency_ms", latency)
    for epoch, accuracy in enumerate(curve, start=1):
        pruners.report(trial, accuracy, epoch)
    return trial


def test_a_trial_beaten_at_its_epoch_by_cheaper_trials_is_pruned_and_a_cheaper_one_is_not():
    study = _study()
    _finished(study, 0.5, [0.40, 0.45, 0.47])
    _finished(study, 0.6, [0.42, 0.46, 0.48])
    _finished(study, 3.0, [0.10, 0.12, 0.13])  # costs more than all below: never one of their peers
    assert pruners.should_prune(_running(study, 2.0, [0.30]))  # below 0.41, the cheaper two's median at epoch 1
    assert not pruners.should_prune(_running(study, 2.0, [0.43]))
    assert not pruners.should_prune(_running(study, 0.3, [0.20]))  # less accurate, but nothing cheaper beats it
    assert not pruners.should_prune(_running(study, 0.55, [0.20]))  # one cheaper trial: fewer than n_startup_trials
    # the trial's best epoch so far counts, as in Optuna's median rule
    assert not pruners.should_prune(_running(study, 2.0, [0.46, 0.30]))
    assert not pruners.should_prune(_running(study, 2.0, [0.30, 0.30, 0.30])), "the last epoch saves nothing"
    # the plain median among all trials, whatever they cost, would have stopped the cheap one
    study.pruner = pruners.ParetoMedianPruner(("latency_ms",), epochs=3, n_startup_trials=2, among="all")
    assert pruners.should_prune(_running(study, 0.3, [0.20]))


def test_only_complete_trials_that_reached_the_epoch_are_peers_and_warm_up_is_kept():
    study = _study(n_warmup_steps=2)
    _finished(study, 0.5, [0.40, 0.45], state=TrialState.PRUNED)
    study.add_trial(optuna.trial.create_trial(  # broke a constraint: complete, never trained, no reports
        state=TrialState.COMPLETE, values=[0.0, 0.4], user_attrs={"latency_ms": 0.4, "infeasible": "params"}))
    _finished(study, 0.5, [0.40, 0.45, 0.47])
    assert not pruners.should_prune(_running(study, 2.0, [0.30])), "epoch 1 is warm-up"
    assert not pruners.should_prune(_running(study, 2.0, [0.30, 0.30])), "one complete peer at epoch 2"
    _finished(study, 0.6, [0.41, 0.44, 0.49])
    assert pruners.should_prune(_running(study, 2.0, [0.30, 0.30]))


def test_tpe_reads_a_two_objective_study_with_pruned_trials():
    def run(sampler):
        study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
        for i in range(6):
            trial = study.ask()
            x = trial.suggest_float("x", 0, 1)
            if i % 3 == 2:
                pruners.report(trial, 0.3, 1)
                study.tell(trial, state=TrialState.PRUNED)
            else:
                study.tell(trial, [x, x])
        return study

    with pytest.raises(RuntimeError, match="single direction cannot be retrieved from a multi-objective study"):
        run(optuna.samplers.TPESampler(seed=0, n_startup_trials=2))  # why the project has its own
    study = run(pruners.MultiObjectiveTPESampler(seed=0, n_startup_trials=2))
    assert [t.state for t in study.trials].count(TrialState.PRUNED) == 2
    assert all(t.intermediate_values == {1: 0.3} for t in study.trials if t.state == TrialState.PRUNED)
    # what TPE read: the pruned trials, without their reports (so ranked after the complete ones)
    seen = getattr(pruners._PrunedWithoutReports(study), optuna_private.TPE_READS_TRIALS)(deepcopy=False)
    assert [(t.number, t.intermediate_values) for t in seen if t.state == TrialState.PRUNED] == [(2, {}), (5, {})]


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_retried_two_objective_trial_inherits_its_reports(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path}/s.db", heartbeat=True)
    study = _study(storage)
    trial = _running(study, 1.0, [0.31, 0.35])
    storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)  # its worker died
    storage.get_heartbeat_stale_trial_callback()(study, study.trials[trial.number])
    [retry] = study.get_trials(states=(TrialState.WAITING,))
    assert retry.intermediate_values == {1: 0.31, 2: 0.35}


def test_savings_count_the_trials_stopped_and_the_epochs_they_did_not_run():
    study = _study()
    _finished(study, 0.5, [0.40, 0.45, 0.47])
    _finished(study, 0.5, [0.20], state=TrialState.PRUNED)
    _finished(study, 0.5, [0.20, 0.25], state=TrialState.PRUNED)
    s = pruners.savings(study, "pareto-median", epochs=3)
    assert s == {"pruner": "pareto-median", "trials": 3, "pruned": 2, "epochs_run": 6, "epochs_saved": 3}
    assert pruners.format_savings(s) == "pruner pareto-median: stopped 2 of 3 trials early; 6 epochs run, 3 saved (33%)"
    # A study that searches epochs: a trial stopped at its last epoch saved nothing, whatever the study's default.
    study.add_trial(optuna.trial.create_trial(state=TrialState.PRUNED, params={"epochs": 2},
                                              distributions={"epochs": optuna.distributions.CategoricalDistribution([1, 2])},
                                              intermediate_values={1: 0.3, 2: 0.31}))
    assert pruners.savings(study, "median", epochs=25)["epochs_saved"] == 24 + 23 + 0


@pytest.mark.parametrize("changes, message", [
    ({"objectives": TWO}, "pruner: median cannot prune a multi-objective study; use type: pareto-median"),
    ({"pruner": {"type": "pareto-median"}}, "pareto-median compares trials by cost objectives; add objectives:"),
    ({"objectives": TWO, "pruner": {"type": "pareto-median", "among": "dearer"}}, "bad sampler or pruner option"),
    ({"objectives": TWO, "pruner": {"type": "pareto-median", "interval_steps": 2}}, "unknown key(s) interval_steps"),
])
def test_a_pruner_a_study_cannot_run_is_one_line(tmp_path, changes, message):
    with pytest.raises(FerOptError) as e:
        fer_study.load_spec(tiny_study(tmp_path / "s.yaml", **changes))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_pareto_median_refuses_a_cost_not_known_before_training(tmp_path, monkeypatch):
    """Every objective the parser allows today is known before training, so a measure is taken off the list."""
    path = tiny_study(tmp_path / "s.yaml", objectives=TWO + [{"params": "minimize"}],
                      pruner={"type": "pareto-median", "n_startup_trials": 2})
    assert fer_study.load_spec(path).pruner["type"] == "pareto-median"
    monkeypatch.setattr(pruners, "KNOWN_BEFORE_TRAINING", pruners.KNOWN_BEFORE_TRAINING - {"latency_ms"})
    with pytest.raises(FerOptError) as e:
        fer_study.load_spec(path)
    assert str(e.value) == (f"{path}: pruner: pareto-median needs every cost known before training, and latency_ms "
                            "is not; drop the pruner (type: none) or that objective")
