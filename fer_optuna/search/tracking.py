"""Optional Weights & Biases logging: one W&B run per trial, grouped by study.

Written here rather than taken from optuna-integration, whose W&B callback is
deprecated. Works offline (WANDB_MODE=offline); wandb is imported only when used.
"""

from __future__ import annotations

from typing import Any

from fer_optuna.training.trainer import EpochStats


class TrialTracker:
    def __init__(self, study_name: str, trial_number: int, params: dict[str, Any]):
        import wandb

        self.run = wandb.init(
            project="fer-optuna", group=study_name, name=f"{study_name}-trial-{trial_number}",
            config={**params, "trial": trial_number, "study": study_name}, reinit="create_new",
        )

    def log_epoch(self, stats: EpochStats) -> None:
        self.run.log({"epoch": stats.epoch, "train/loss": stats.train_loss, "train/acc": stats.train_acc,
                      "val/loss": stats.val_loss, "val/acc": stats.val_acc, "lr": stats.lr,
                      "epoch_seconds": stats.seconds}, step=stats.epoch)

    def summary(self, best_val_acc: float, n_params: int) -> None:
        self.run.summary.update({"best_val_acc": best_val_acc, "n_params": n_params})

    def finish(self, state: str) -> None:
        self.run.summary["state"] = state
        self.run.finish(exit_code=0 if state != "failed" else 1)
