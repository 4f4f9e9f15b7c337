"""`fer-opt` with its first trial held after an epoch, so that a test can kill the worker (or fail the trial)
mid-trial however fast or slow the machine:

    python tests/held.py EPOCH LOG fer-opt-args...

After the first trial's epoch EPOCH is reported (its checkpoint saved, its value in the storage), the
process writes the file held_file(LOG) and waits until release(LOG) has been called; then it goes on as
`fer-opt` would. LOG is the file the process writes its output to; the two files lie beside it.
"""

import runpy
import sys
import time
from pathlib import Path

from fer_optuna.search import worker


def hold_after(epoch: int, held: Path, release: Path) -> None:
    report = worker.EpochReporter.__call__

    def reported(self, stats):
        report(self, stats)
        if stats.epoch == epoch and not held.exists():
            held.write_text(f"trial {self.trial.number} epoch {epoch}\n")
            while not release.exists():
                time.sleep(0.1)

    worker.EpochReporter.__call__ = reported


def held_command(epoch: int, log: Path, *args) -> list[str]:
    """The command line of `fer-opt ARGS`, its output to go to `log`, held after `epoch` until release(log)."""
    return [sys.executable, __file__, str(epoch), str(log), *map(str, args)]


def held_file(log: Path) -> Path:
    return log.with_suffix(".held")


def _release_file(log: Path) -> Path:
    return log.with_suffix(".release")


def release(log: Path) -> None:
    _release_file(log).touch()


if __name__ == "__main__":
    log = Path(sys.argv[2])
    hold_after(int(sys.argv[1]), held_file(log), _release_file(log))
    sys.argv = ["fer-opt", *sys.argv[3:]]
    runpy.run_module("fer_optuna.cli", run_name="__main__")
