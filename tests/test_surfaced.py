"""What used to be swallowed now surfaces: a damaged run state, the main job's dashboard dying, which pruner pruned."""
import optuna
import pytest
import torch

from fer_optuna.errors import FerOptError
from ports import free_port
from fer_optuna.search.worker import EpochReporter
from fer_optuna.training import checkpoints
from fer_optuna.training.config import TrainConfig
from fer_optuna.training.trainer import EpochStats


def test_saved_history_reads_the_epochs_of_a_state(tmp_path):
    path = tmp_path / "model.state.pt"
    checkpoints.save_state(path, TrainConfig(), "data-key", {"history": [{"epoch": 1}, {"epoch": 2}]})
    assert checkpoints.saved_history(path) == [{"epoch": 1}, {"epoch": 2}]
    assert checkpoints.saved_history(tmp_path / "none.state.pt") == [], "no state yet: no epoch done"


@pytest.mark.parametrize("content", [b"half a file", "a torch file of something else"])
def test_a_damaged_state_names_the_file_and_the_fix_instead_of_reading_as_epoch_0(tmp_path, content):
    path = tmp_path / "model.state.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save({"kind": "model"}, path)
    with pytest.raises(FerOptError) as caught:
        checkpoints.saved_history(path)
    assert str(path) in str(caught.value) and "delete it" in str(caught.value)


@pytest.mark.parametrize("pruner", [optuna.pruners.ThresholdPruner(lower=0.5),
                                    optuna.pruners.HyperbandPruner(min_resource=1, max_resource=3, reduction_factor=3)])
def test_the_prune_message_names_the_pruner_that_pruned(pruner):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for acc in (0.9, 0.8, 0.85, 0.95, 0.7, 0.75, 0.9, 0.8):  # earlier trials, for Hyperband's brackets to rank against
        trial = study.ask()
        for epoch in (1, 2, 3):
            trial.report(acc, epoch)
            trial.should_prune()  # Hyperband ranks a trial among those that asked at the same rung
        study.tell(trial, acc)
    for _ in range(8):  # a hopeless trial; Hyperband prunes one once its bracket has others to compare with
        trial = study.ask()
        reporter = EpochReporter(trial, TrainConfig(epochs=3), None, None, log=lambda _: None)
        try:
            for epoch in (1, 2, 3):
                reporter(EpochStats(epoch, 1.0, 0.1, 1.0, 0.1, 0.001, 0.1))
        except optuna.TrialPruned as pruned:
            assert f"pruned by {type(pruner).__name__}" in str(pruned) and "median" not in str(pruned)
            return
        study.tell(trial, 0.1)
    pytest.fail("the hopeless trials were never pruned")


def test_a_dashboard_that_dies_is_reported_with_its_log(tmp_path):
    from fer_optuna import pipeline

    said = []
    log_path = tmp_path / "out" / "dashboard.log"
    # a storage URL the dashboard cannot open: it exits at once with its one-line error
    board = pipeline._dashboard("nosuchdb://x", free_port(), log_path, said.append)
    board.watcher.join(timeout=60)
    assert str(log_path) in said[0], "the start line names the log"
    assert said[-1].startswith("the dashboard exited (status 2)") and str(log_path) in said[-1]
    assert "bad storage URL" in log_path.read_text()


def test_a_dashboard_stopped_by_the_job_is_not_reported_as_dead(tmp_path):
    from fer_optuna import pipeline

    said = []
    board = pipeline._dashboard(f"sqlite:///{tmp_path}/s.db", free_port(), tmp_path / "dashboard.log", said.append)
    board.stop()
    board.watcher.join(timeout=60)
    assert len(said) == 1, said
