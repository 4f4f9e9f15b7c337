"""Rungs: a study's ladder of fidelities, lowest first, so that the search chooses at full fidelity.

Rung 0 is the study itself: the search, at `train:` with the first rung's fields. When it is
drained, the first worker to create the study `<study>/rung-1` in the same storage promotes the
best ceil(n/eta) complete trials of rung 0 (feasible ones first) and the study file's enqueued
configurations (the baselines, never pruned at any rung) to it, as fixed parameters, and re-runs
them from the start at rung 1's fidelity; and so on up the ladder. A rung's fields apply on top of
the rung below (a field a rung does not set keeps the value below it).

Creating the rung's study is the claim: names are unique in a storage, so one worker promotes.
It enqueues the promoted configurations, then marks the rung ready (ATTR_PROMOTED); the others
wait for the mark. A promoter that dies between the two leaves a rung without the mark: after a
grace period a waiting worker finishes the promotion (enqueues what is missing, marks it). If two
ever enqueue the same configuration, the second copy is dropped when a worker takes it (refusal).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import replace
from typing import Any, Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from fer_optuna.errors import FerOptError
from fer_optuna.training.config import FIELDS, TrainConfig, config_from_dict
from fer_optuna.training.data import FerData, stratified_indices
from .budget import METRIC, feasible
from .optuna_private import storage_of, study_system_attrs

BASELINE = "baseline"  # trial user attribute: a study file's enqueued configuration, never pruned
PROMOTED_FROM = "promoted_from"  # trial user attribute at rung r > 0: the number of the trial of rung r-1 it re-runs
ATTR_PROMOTED = "fer_opt.promoted"  # rung study user attribute, written last: the rung is ready; those trial numbers
ATTR_RUNG = "fer_opt.rung"  # rung study user attribute: its rung
ATTR_VAL_IMAGES = "fer_opt.val_images"  # user attribute of each rung's study: how many val images its trials score
FIDELITY = ("train_subset", "val_subset", "epochs")  # what a rung must raise; 0 subsets mean all the data
DEFAULT_ETA = 3


# --------------------------------------------------------------------------- the study file's rungs


def _level(cfg: TrainConfig, name: str) -> float:
    value = getattr(cfg, name)
    return math.inf if name != "epochs" and not value else value


def parse(where: str, raw: dict, train: TrainConfig, searched: set[str],
          objectives: tuple[str, ...]) -> tuple[tuple[tuple[tuple[str, Any], ...], ...], int]:
    """The study file's `rungs:` (each rung's fields, as pairs) and `eta`; ((), DEFAULT_ETA) without rungs."""
    ladder, eta = raw.get("rungs"), raw.get("eta", DEFAULT_ETA)
    if ladder is None:
        if "eta" in raw:
            raise FerOptError(f"{where}: eta: set without rungs; it says how many trials of a rung make one promoted to the next, so it needs rungs:")
        return (), DEFAULT_ETA
    if not isinstance(eta, int) or isinstance(eta, bool) or eta < 2:
        raise FerOptError(f"{where}: eta: {eta!r}; it must be an integer of at least 2 (rung r+1 runs the best "
                          "ceil(n/eta) of rung r's n complete trials)")
    if len(objectives) > 1:
        raise FerOptError(f"{where}: rungs: a two-objective study cannot have rungs: it ends in a Pareto front, not one "
                          "winner to refit at full fidelity; search it on all the data, or drop objectives")
    if not isinstance(ladder, list) or len(ladder) < 2 or not all(isinstance(r, dict) and r for r in ladder):
        raise FerOptError(f"{where}: rungs: expected a list of at least two mappings of train fields, lowest "
                          "fidelity first, e.g. [{train_subset: 2500}, {train_subset: 0}]")
    below = None
    for i, fields in enumerate(ladder):
        for name in fields:
            if name not in FIELDS or name == "provenance":
                raise FerOptError(f"{where}: rungs[{i}].{name}: not a training config field")
            if name in searched:
                raise FerOptError(f"{where}: rungs[{i}].{name}: the search space chooses it; a rung sets only what "
                                  "is fixed (train_subset, val_subset, epochs, ...)")
        cfg = config_from_dict({**(below or train).to_dict(), **fields}, f"{where}: rungs[{i}]")
        if below is not None:
            fell = [n for n in FIDELITY if _level(cfg, n) < _level(below, n)]
            if fell or not any(_level(cfg, n) > _level(below, n) for n in FIDELITY):
                name = fell[0] if fell else "/".join(FIDELITY)
                raise FerOptError(f"{where}: rungs[{i}].{name}: does not raise fidelity over rungs[{i - 1}] "
                                  f"({', '.join(f'{n} {getattr(below, n)} -> {getattr(cfg, n)}' for n in FIDELITY)}; "
                                  "0 subsets are all the data); each rung trains on more data or longer, never on less")
        below = cfg
    return tuple(tuple(fields.items()) for fields in ladder), eta


def count(spec) -> int:
    """How many rungs the study has: 1 without `rungs:`."""
    return max(1, len(spec.rungs))


def at(spec, rung: int, promoted: int | None = None):
    """The study spec of a rung: its train config (rung 0's is the spec's own) and, above rung 0, its budget."""
    if rung == 0:
        return spec
    fields = {k: v for level in spec.rungs[1:rung + 1] for k, v in level}
    return replace(spec, train=spec.train.replace(**fields), n_trials=promoted if promoted is not None else spec.n_trials)


def name(study_name: str, rung: int) -> str:
    return study_name if rung == 0 else f"{study_name}/rung-{rung}"


def roots(names: list[str]) -> list[str]:
    """The names that are not a rung of another study in the list."""
    return [n for n in names if not (n.rpartition("/rung-")[2].isdigit() and n.rpartition("/rung-")[0] in names)]


def of(root_name: str, names: list[str]) -> list[str]:
    """The rung studies of a study among `names`."""
    return [n for n in names if n.rpartition("/rung-")[0] == root_name and n.rpartition("/rung-")[2].isdigit()]


def fidelity(spec, rung: int) -> dict[str, Any]:
    """The fields the ladder sets, at this rung (a searched field such as epochs is each trial's own)."""
    cfg = at(spec, rung).train
    return {n: getattr(cfg, n) for n in dict.fromkeys(k for level in spec.rungs for k, _ in level)}


def format_fidelity(fields: dict[str, Any]) -> str:
    return ", ".join(f"{n} {v or 'all'}" if n.endswith("_subset") else f"{n} {v}" for n, v in fields.items())


def val_images(data: FerData, cfg: TrainConfig) -> int:
    """How many val images a trial at this config is scored on (inference.to_device's selection)."""
    labels = data.split("val")[1]
    if cfg.val_subset and cfg.val_subset < len(labels):
        return len(stratified_indices(labels, cfg.val_subset / len(labels), cfg.seed))
    return len(labels)


# --------------------------------------------------------------------------- trials


def baseline_attrs(spec) -> dict[str, Any]:
    """The user attributes of an enqueued configuration: flagged as the baseline in a study with rungs."""
    return {BASELINE: True} if spec.rungs else {}


def is_baseline(trial) -> bool:
    return bool(trial.user_attrs.get(BASELINE))


def refusal(study: optuna.Study, trial: optuna.Trial, rung: int) -> str | None:
    """Why a trial of rung r > 0 must not run: it is no promoted configuration (a worker asked when another had
    just taken the last one), or a second copy of one that another trial runs."""
    if rung == 0:
        return None
    origin = trial.user_attrs.get(PROMOTED_FROM)
    if origin is None:
        return f"rung {rung} runs only the configurations promoted to it"
    twin = next((t for t in study.get_trials(deepcopy=False) if t.number < trial.number and t.state != TrialState.FAIL
                 and t.user_attrs.get(PROMOTED_FROM) == origin), None)
    if twin is not None:
        return f"trial {origin} of rung {rung - 1} already runs at rung {rung} as trial {twin.number}"
    return None


def promoted(below: list[FrozenTrial], eta: int) -> list[FrozenTrial]:
    """The trials of a drained rung that go up: the best ceil(n/eta) of its n complete ones (at least one), feasible
    ones first, and every baseline (its complete attempt if it has one), each configuration once."""
    complete = [t for t in below if t.state == TrialState.COMPLETE]
    best = sorted(complete, key=lambda t: (feasible(t), t.values[0], -t.number), reverse=True)
    chosen = {}
    for t in sorted((t for t in below if is_baseline(t) and t.params), key=lambda t: (t.state == TrialState.COMPLETE, t.number)):
        chosen[_key(t)] = t  # the last word: a complete attempt over a failed one
    for t in best[:max(1, math.ceil(len(complete) / eta))]:
        chosen.setdefault(_key(t), t)
    return sorted(chosen.values(), key=lambda t: t.number)


def _key(trial: FrozenTrial) -> tuple:
    return tuple(sorted(trial.params.items()))


# --------------------------------------------------------------------------- promotion


def _promote(study: optuna.Study, below: optuna.Study, root: optuna.Study, spec, rung: int) -> list[int]:
    """Enqueue the promoted configurations the rung's study does not hold yet, then mark it ready."""
    from optuna_dashboard import save_note

    from .artifacts import ATTR_ARTIFACTS
    from .study import ATTR_FILE, ATTR_DATA, ATTR_LABELS, ATTR_LABELS_SHA256, ATTR_PATH

    storage = storage_of(study)
    study_id = storage.get_study_id_from_name(study.study_name)
    kept = study_system_attrs(root)
    for key in (ATTR_FILE, ATTR_ARTIFACTS, ATTR_LABELS_SHA256):  # the study file, for the model's provenance; the
        # trial files' store; the votes' digest, that a worker's copy of them is the study's
        if key in kept:
            storage.set_study_system_attr(study_id, key, kept[key])
    for key in (ATTR_DATA, ATTR_LABELS, ATTR_PATH):
        if key in root.user_attrs:
            study.set_user_attr(key, root.user_attrs[key])
    study.set_user_attr(ATTR_RUNG, rung)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([METRIC])  # the dashboard's axis reads val_accuracy
    chosen = promoted(below.get_trials(deepcopy=False), spec.eta)
    there = {t.user_attrs.get(PROMOTED_FROM) for t in study.get_trials(deepcopy=False)}
    for t in chosen:
        if t.number not in there:
            study.enqueue_trial(t.params, user_attrs={PROMOTED_FROM: t.number, **({BASELINE: True} if is_baseline(t) else {})})
    save_note(study, f"Rung {rung} of study `{root.study_name}` ({format_fidelity(fidelity(spec, rung))}): trials "
                     f"{', '.join(str(t.number) for t in chosen)} of `{below.study_name}` re-run from the start, "
                     f"the best ceil(n/{spec.eta}) and the baseline.\n")
    study.set_user_attr(ATTR_PROMOTED, [t.number for t in chosen])
    return [t.number for t in chosen]


def open_rung(root: optuna.Study, spec, rung: int, grace: float, log: Callable[[str], None],
              wait: float = 2.0) -> tuple[optuna.Study, Any]:
    """The study of a rung above 0 and its spec, once rung-1 is drained: promoted by this worker if it is the
    first to get there, else by another (waited for; finished here if that one died halfway)."""
    storage = storage_of(root)
    below = optuna.load_study(study_name=name(root.study_name, rung - 1), storage=storage)
    try:
        study = optuna.create_study(study_name=name(root.study_name, rung), storage=storage, direction="maximize")
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name(root.study_name, rung), storage=storage)
        since = time.monotonic()
        while ATTR_PROMOTED not in study.user_attrs:
            if time.monotonic() - since > grace:
                log(f"rung {rung}: the worker promoting to it stopped halfway; finishing its promotion")
                _promote(study, below, root, spec, rung)
                break
            time.sleep(wait)
    else:
        chosen = _promote(study, below, root, spec, rung)
        log(f"rung {rung}: promoted trials {', '.join(map(str, chosen))} of {below.study_name} "
            f"to {study.study_name} ({format_fidelity(fidelity(spec, rung))})")
    return study, at(spec, rung, len(study.user_attrs[ATTR_PROMOTED]))


def drained(study: optuna.Study, spec, rung: int, top: bool) -> bool:
    """Nothing left to run at this rung: rung 0's budget is spent (and, below the top, no trial waits or runs);
    above rung 0, no promoted configuration waits or runs."""
    trials = study.get_trials(deepcopy=False)
    if rung == 0 and sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) < spec.n_trials:
        return False
    return (top and rung == 0) or not any(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in trials)


def top(study: optuna.Study, spec, log: Callable[[str], None] | None = None) -> tuple[optuna.Study, Any]:
    """The highest rung's study with a complete trial, and its spec: where the model comes from. A study
    without rungs is its own top."""
    if not spec.rungs:
        return study, spec
    storage = storage_of(study)
    names = optuna.get_all_study_names(storage)
    for rung in reversed(range(1, count(spec))):
        if name(study.study_name, rung) not in names:
            continue
        found = optuna.load_study(study_name=name(study.study_name, rung), storage=storage)
        done = found.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if ATTR_PROMOTED in found.user_attrs and done:
            if log:
                log(f"from rung {rung} of {count(spec) - 1} ({format_fidelity(fidelity(spec, rung))}): "
                    f"study {found.study_name}" + ("" if rung == count(spec) - 1 else "; the top rung has no complete trial yet"))
            return found, at(spec, rung, len(found.user_attrs[ATTR_PROMOTED]))
    return study, spec


def provenance(study: optuna.Study) -> dict[str, Any]:
    return {"rung": study.user_attrs[ATTR_RUNG]} if ATTR_RUNG in study.user_attrs else {}


# --------------------------------------------------------------------------- what each rung bought


def spearman(pairs: list[tuple[float, float]]) -> float | None:
    """Spearman's rank correlation (ties take their mean rank); None under 3 pairs or for a constant side."""
    if len(pairs) < 3:
        return None

    def ranks(values):
        order = sorted(range(len(values)), key=values.__getitem__)
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in order[i:j + 1]:
                out[k] = (i + j) / 2
            i = j + 1
        return out

    a, b = ranks([p[0] for p in pairs]), ranks([p[1] for p in pairs])
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    var = math.sqrt(sum((x - ma) ** 2 for x in a) * sum((y - mb) ** 2 for y in b))
    return cov / var if var else None


def _stderr(accuracy: float, n: int | None) -> float | None:
    """One binomial standard error of an accuracy measured on n images."""
    return math.sqrt(accuracy * (1 - accuracy) / n) if n else None


def summary(root: optuna.Study, spec) -> dict[str, Any] | None:
    """Each rung that exists: its fidelity, the best trial against the baseline with one standard error each and
    whether the gap is within noise (under two standard errors of the difference), and Spearman's rank
    correlation with the rung below over the configurations that ran at both."""
    if not spec.rungs:
        return None
    from .study import comparison

    storage = storage_of(root)
    names = optuna.get_all_study_names(storage)
    rows, below = [], None
    for rung in range(count(spec)):
        if name(root.study_name, rung) not in names:
            break
        study = optuna.load_study(study_name=name(root.study_name, rung), storage=storage)
        chosen = study.user_attrs.get(ATTR_PROMOTED)
        if rung and chosen is None:
            break
        here = at(spec, rung, len(chosen) if chosen else None)
        trials = study.get_trials(deepcopy=False)
        n_val = study.user_attrs.get(ATTR_VAL_IMAGES)
        row = {"rung": rung, "study": study.study_name, "fidelity": fidelity(spec, rung),
               "promoted": chosen, "finished": sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials),
               "budget": here.n_trials, "val_images": n_val, "best": None, "baseline": None, "gain": None,
               "within_noise": None, "spearman": None, "pairs": 0}
        c = comparison(study, here)
        if c is not None:
            for key, which in (("best", c["best"]), ("baseline", c["original"])):
                row[key] = {"trial": which["trial"], "val_accuracy": which["val_accuracy"],
                            "stderr": _stderr(which["val_accuracy"], n_val)}
            row["gain"] = c["gain"]
            if n_val:
                noise = math.hypot(row["best"]["stderr"], row["baseline"]["stderr"])
                row["within_noise"] = abs(c["gain"]) < 2 * noise
        if below is not None:
            lower = {t.number: t for t in below if t.state == TrialState.COMPLETE}
            pairs = [(lower[t.user_attrs[PROMOTED_FROM]].values[0], t.values[0]) for t in trials
                     if t.state == TrialState.COMPLETE and t.user_attrs.get(PROMOTED_FROM) in lower]
            row["pairs"], row["spearman"] = len(pairs), spearman(pairs)
        rows.append(row)
        below = trials
    return {"eta": spec.eta, "ladder": rows}


def format_summary(info: dict[str, Any] | None) -> list[str]:
    if not info:
        return []
    lines = [f"what each rung bought (rung r+1 re-runs the best ceil(n/{info['eta']}) of rung r's n and the baseline, "
             "from the start, on its own data):"]
    for r in info["ladder"]:
        head = f"  rung {r['rung']} ({r['study']}): {format_fidelity(r['fidelity'])}; {r['finished']}/{r['budget']} finished"
        lines.append(head + (f", {len(r['promoted'])} promoted" if r["promoted"] is not None else ""))
        if r["best"] is not None:
            def acc(x):
                return f"{x['val_accuracy']:.4f}" + (f" ± {x['stderr']:.4f}" if x["stderr"] is not None else "")

            noise = {None: "", True: ", within noise", False: ", beyond noise"}[r["within_noise"]]
            lines.append(f"    best trial {r['best']['trial']}: {acc(r['best'])}; baseline trial {r['baseline']['trial']}: "
                         f"{acc(r['baseline'])}; {100 * r['gain']:+.1f} points{noise}"
                         + (f" (one standard error, {r['val_images']} val images)" if r["val_images"] else ""))
        if r["rung"]:
            rho = "n/a" if r["spearman"] is None else f"{r['spearman']:+.2f}"
            lines.append(f"    rank correlation with rung {r['rung'] - 1}: Spearman {rho} over {r['pairs']} configurations")
    return lines
