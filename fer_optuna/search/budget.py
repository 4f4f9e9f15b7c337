"""A deployment budget: the limits a study's models must keep to and the costs it trades accuracy for.

A study file may set `constraints:` (each measure of training.costs with a min, a max or both;
a trial past one is complete but infeasible) and `objectives:` (val_accuracy first, then costs
to minimise: a multi-objective study and its Pareto front). Here are those two keys' parsing,
and how the commands choose among trials under them: the best feasible trial, the front, and
`--pick` rules such as 'latency_ms<=3,params<2e6'.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import TrialState

from fer_optuna.errors import FerOptError
from fer_optuna.training.costs import MEASURES

METRIC = "val_accuracy"
ATTR_INFEASIBLE = "infeasible"  # why a trial broke a constraint, in words
# (measure, lowest, highest) a deployable model must keep to; None: no limit that side
Constraints = tuple[tuple[str, float | None, float | None], ...]


def _unknown_measure(where: str, name: Any) -> FerOptError:
    return FerOptError(f"{where}: {name!r} is not a measure; choose from {', '.join(MEASURES)}")


def parse_constraints(where: str, raw: Any) -> Constraints:
    if raw is None:
        return ()
    if not isinstance(raw, dict) or not raw:
        raise FerOptError(f"{where}: constraints must map measures to limits, e.g. {{latency_ms: {{max: 3.0}}}}")
    found = []
    for name, limits in raw.items():
        if name not in MEASURES:
            raise _unknown_measure(f"{where}: constraints", name)
        if not isinstance(limits, dict) or not limits or set(limits) - {"min", "max"} or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in limits.values()):
            raise FerOptError(f"{where}: constraints.{name}: expected {{max: NUMBER}}, {{min: NUMBER}} or both")
        found.append((name, limits.get("min"), limits.get("max")))
    return tuple(found)


def parse_objectives(where: str, raw: Any) -> tuple[str, ...]:
    if raw is None:
        return (METRIC,)
    pairs = [next(iter(item.items())) if isinstance(item, dict) and len(item) == 1 else (None, None)
             for item in (raw if isinstance(raw, list) else [None])]
    if not pairs or pairs[0] != (METRIC, "maximize"):
        raise FerOptError(f"{where}: objectives must be a list that starts with 'val_accuracy: maximize', then costs "
                          "to minimise, e.g. [val_accuracy: maximize, latency_ms: minimize]")
    for name, direction in pairs[1:]:
        if name not in MEASURES:
            raise _unknown_measure(f"{where}: objectives", name)
        if direction != "minimize":
            raise FerOptError(f"{where}: objectives: {name} can only be minimized (a cost); write '{name}: minimize'")
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise FerOptError(f"{where}: objectives: each measure may appear once ({', '.join(names)})")
    return tuple(names)


def violations(constraints: Constraints, costs: dict[str, float]) -> dict[str, float]:
    """Each constraint as Optuna keeps it: how far the measure is past its limit (> 0 breaks it)."""
    found = {}
    for name, low, high in constraints:
        over = [costs[name] - high] if high is not None else []
        under = [low - costs[name]] if low is not None else []
        found[name] = max(over + under)
    return found


def feasible(trial: optuna.trial.FrozenTrial) -> bool:
    return all(v <= 0 for v in trial.constraints.values())


def ranked(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The complete trials that keep to the constraints, most accurate first: what status, export,
    ensembles and the report choose from."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if feasible(t)]
    return sorted(complete, key=lambda t: t.values[0], reverse=True)


def front(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The feasible trials no other beats on every objective, most accurate first."""
    return sorted(study.best_trials, key=lambda t: t.values[0], reverse=True)


def costs_of(trial: optuna.trial.FrozenTrial) -> dict[str, float]:
    return {k: trial.user_attrs[k] for k in MEASURES if k in trial.user_attrs}


PICK_OPS = {"<=": float.__le__, ">=": float.__ge__, "<": float.__lt__, ">": float.__gt__}


def pick(study: optuna.Study, rule: str) -> optuna.trial.FrozenTrial:
    """The most accurate feasible trial that keeps to a rule such as 'latency_ms<=3' or
    'latency_ms<=3,params<2e6' (val_accuracy and every measure can be named)."""
    tests = []
    for part in rule.split(","):
        op = next((op for op in PICK_OPS if op in part), None)
        name, value = part.split(op, 1) if op else (part, "")
        try:
            limit = float(value)
        except ValueError:
            raise FerOptError(f"rule {rule!r}: write MEASURE<=NUMBER (or <, >=, >), several joined by commas, "
                              "e.g. 'latency_ms<=3,params<2e6'", flag="--pick") from None
        name = name.strip()
        if name not in (METRIC, *MEASURES):
            raise FerOptError(f"rule {rule!r}: {name!r} is not a measure; choose from {METRIC}, {', '.join(MEASURES)}",
                              flag="--pick")
        tests.append((name, PICK_OPS[op], limit))

    def measure(t, name):
        return t.values[0] if name == METRIC else t.user_attrs.get(name)

    trials = ranked(study)
    for trial in trials:
        if all(measure(trial, n) is not None and op(float(measure(trial, n)), limit) for n, op, limit in tests):
            return trial
    spans = ", ".join(f"{n} runs {min(vals):g} to {max(vals):g}" for n, _, _ in tests
                      if (vals := [measure(t, n) for t in trials if measure(t, n) is not None]))
    raise FerOptError(f"rule {rule!r}: no complete feasible trial keeps to it ({spans or 'no trial measured yet'}); "
                      "loosen the rule", flag="--pick")


def format_costs(costs: dict[str, float]) -> str:
    shown = {"params": lambda v: f"{v / 1e6:.2f}M params", "macs": lambda v: f"{v / 1e6:.0f}M MACs",
             "size_mb": lambda v: f"{v:.1f} MB", "latency_ms": lambda v: f"{v:.2f} ms/face",
             "latency_b32_ms": lambda v: f"{v:.1f} ms/32 faces"}
    return ", ".join(shown[k](v) for k, v in costs.items())


def format_front(rows: list[dict[str, Any]]) -> list[str]:
    """The Pareto front as a table: each trial's objectives and its other costs."""
    if not rows:
        return ["pareto front: no complete feasible trial yet"]
    names = [k for k in rows[0] if k not in ("number", "costs")]
    extra = [k for k in MEASURES if k not in names and k in rows[0]["costs"]]
    lines = [f"pareto front ({len(rows)} trials):", "  trial  " + "  ".join(f"{n:>14}" for n in names + extra)]
    for r in rows:
        cells = [r[n] for n in names] + [r["costs"][n] for n in extra]
        lines.append(f"  {r['number']:>5}  " + "  ".join(f"{v:>14.4g}" for v in cells))
    return lines
