"""After a study: the top-K soft-voting ensemble, and one self-contained HTML report page."""

from __future__ import annotations

import base64
import html
import io
import tempfile
import time
import warnings
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

from fer_optuna.errors import FerOptError
from fer_optuna.options import StoreOptions
from fer_optuna.training import checkpoints, inference, metrics
from fer_optuna.training import data as fer_data
from . import artifacts, pruners, rungs
from .budget import costs_of, format_costs, format_front, ranked
from .study import StudySpec, comparison, format_comparison, status


class TrialCheckpoints:
    """A study's trials' best checkpoints, wherever they are: the study's artifact store, or this machine's
    disk (studies made before the store, or without one)."""

    def __init__(self, study: optuna.Study, options: StoreOptions | None = None):
        self.study, self.store = study, artifacts.study_store(study, options=options)

    def reachable(self, trial: optuna.trial.FrozenTrial) -> bool:
        in_store = self.store is not None and "checkpoint_artifact" in trial.user_attrs
        return in_store or Path(trial.user_attrs.get("checkpoint", "")).is_file()

    def best(self, top: int, trials: list[optuna.trial.FrozenTrial] | None = None) -> list[optuna.trial.FrozenTrial]:
        """The `top` best complete trials (of `trials`, ranked: else the study's) whose checkpoint can be had."""
        found = [t for t in (ranked(self.study) if trials is None else trials) if self.reachable(t)]
        if not found:
            raise FerOptError(f"study {self.study.study_name!r} has no complete trial with a checkpoint in its artifact "
                              "store or on this machine; workers upload them to the study's artifact store, or keep them in "
                              "their checkpoint_dir (default studies/checkpoints)", flag="--checkpoint-dir")
        return found[:top]

    def load(self, trial: optuna.trial.FrozenTrial) -> dict:
        if self.store is not None and "checkpoint_artifact" in trial.user_attrs:
            with tempfile.TemporaryDirectory() as tmp:
                return checkpoints.read_checkpoint(self.store.get(trial.user_attrs["checkpoint_artifact"],
                                                                  Path(tmp) / f"trial-{trial.number}.pt"))
        return checkpoints.read_checkpoint(trial.user_attrs["checkpoint"])


def build_ensemble(study: optuna.Study, top: int, out: Path,
                   options: StoreOptions | None = None) -> list[optuna.trial.FrozenTrial]:
    if top < 1:
        raise FerOptError(f"top is {top}: an ensemble needs one trial or more", flag="--top")
    found = TrialCheckpoints(study, options)
    trials = found.best(top)
    checkpoints.save_ensemble(out, [found.load(t) for t in trials], study=study.study_name,
                              trials=[t.number for t in trials], val_accuracies=[t.values[0] for t in trials])
    return trials


def _quietly(plot, *args, **kwargs):
    """Optuna warns that a target is minimised whenever one is given; ours is negated on purpose."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return plot(*args, **kwargs)


def _figure_html(fig, first: bool) -> str:
    return fig.to_html(full_html=False, include_plotlyjs="inline" if first else False, default_height=420)


def _table(rows: list[list], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_report(study: optuna.Study, spec: StudySpec, out: Path, data: fer_data.FerData | None,
                 device: torch.device, ensemble_top: int = 5, bf16: bool = False,
                 options: StoreOptions | None = None) -> Path:
    from optuna import visualization as vis

    trials = study.get_trials(deepcopy=False)
    states = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    sections = [f"<h1>Study {html.escape(study.study_name)}</h1>",
                f"<p>{states['complete']} complete, {states['pruned']} pruned, {states['fail']} failed of a budget of "
                f"{spec.n_trials} trials. Selected on val (PublicTest). Generated {time.strftime('%Y-%m-%d %H:%M')}.</p>"]
    if spec.pruner["type"] != "none":
        saved = pruners.savings(study, spec.pruner["type"], spec.train.epochs)
        sections.append(f"<p>{html.escape(pruners.format_savings(saved))}.</p>")
    bought = format_comparison(comparison(study, spec))
    if bought:
        sections += ["<h2>What the search bought</h2>", f"<pre>{html.escape(chr(10).join(bought[1:]))}</pre>"]
    ladder = rungs.format_summary(rungs.summary(study, spec))
    if ladder:
        sections += ["<h2>What each rung bought</h2>", f"<pre>{html.escape(chr(10).join(ladder))}</pre>"]
    accuracy = {"target": lambda t: t.values[0], "target_name": "val_accuracy"} if spec.multi_objective else {}
    # importances are computed for a value to minimise; in a multi-objective study that is -val_accuracy
    lowest = {"target": lambda t: -t.values[0], "target_name": "val_accuracy"} if spec.multi_objective else {}
    plots = [("Optimisation history", lambda s: vis.plot_optimization_history(s, **accuracy)),
             ("Parallel coordinates", lambda s: vis.plot_parallel_coordinate(s, **accuracy))]
    plots.insert(1, ("Intermediate values (pruned trials stop early)", vis.plot_intermediate_values))
    if states["complete"] >= 2:
        plots.insert(-1, ("Parameter importances", lambda s: _quietly(vis.plot_param_importances, s, **lowest)))
    if spec.multi_objective:
        table = format_front(status(study, spec)["front"])
        plots.insert(0, ("Pareto front", lambda s: vis.plot_pareto_front(s, target_names=list(spec.objectives))))
        sections += ["<h2>Pareto front: no trial beats these on every objective</h2>",
                     f"<pre>{html.escape(chr(10).join(table[1:]))}</pre>"]
    for i, (title, plot) in enumerate(plots):
        sections += [f"<h2>{title}</h2>", _figure_html(plot(study), first=i == 0)]
    complete = ranked(study)
    if complete:
        best = complete[0]
        sections += [f"<h2>Best {'feasible ' if spec.constraints else ''}trial: {best.number}, "
                     f"val accuracy {best.values[0]:.4f}</h2>",
                     f"<p>{html.escape(format_costs(costs_of(best)))}</p>" if costs_of(best) else "",
                     _table([[k, v] for k, v in best.params.items()], ["parameter", "value"])]
        found = TrialCheckpoints(study, options)
        if data is not None and found.reachable(best):
            ckpt = found.load(best)
            acc, rep = inference.val_accuracy(ckpt, data, device, bf16=bf16)
            tta_acc, _ = inference.val_accuracy(ckpt, data, device, tta=True, bf16=bf16)
            sections += [f"<p>val accuracy {acc:.4f}; with TTA {tta_acc:.4f} ({tta_acc - acc:+.4f})</p>",
                         _table([[c, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", m["support"]]
                                 for c, m in rep["per_class"].items()], ["class", "precision", "recall", "F1", "support"])]
            buffer = io.BytesIO()
            metrics.plot_confusion(rep, buffer, f"best trial {best.number}: val accuracy {acc:.3f}")
            sections.append(f'<img alt="confusion matrix" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">')
            members = found.best(ensemble_top)
            if len(members) > 1:
                ens = {"format": checkpoints.CHECKPOINT_FORMAT, "kind": "ensemble", "members": [found.load(t) for t in members]}
                ens_acc, _ = inference.val_accuracy(ens, data, device, bf16=bf16)
                sections.append(f"<h2>Ensemble of the top {len(members)}</h2><p>soft-voting val accuracy {ens_acc:.4f}, "
                                f"{ens_acc - acc:+.4f} over the best single model (trials "
                                f"{', '.join(str(t.number) for t in members)})</p>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>fer-optuna: {html.escape(study.study_name)}</title>"
            f"<style>{style}</style></head><body>{''.join(sections)}</body></html>")
    out.write_text(page)
    return out
