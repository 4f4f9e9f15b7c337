"""Study files and the study-level commands (create, status, export, copy).

A study file (`studies/*.yaml`) is data: the fixed training config, the search
space, the sampler, the pruner and the trial budget. `create-study` stores the
file's text inside the study, so every worker, on any machine, rebuilds the
same objective, sampler and pruner from the storage alone.
"""

from __future__ import annotations

import hashlib
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from fer_optuna.errors import FerOptError
from fer_optuna.options import DataOptions, StoreOptions
from fer_optuna.training import data as fer_data
from fer_optuna.training import distill
from fer_optuna.training.config import FIELDS, TrainConfig, config_from_dict, dump_config
from . import pruners, rungs, shipped
from .budget import (METRIC, Constraints, costs_of, feasible, format_costs, format_front, front, parse_constraints,
                     parse_objectives, pick, ranked)
from .optuna_private import study_system_attrs
from .rungs import DEFAULT_ETA
from .storage import mask_url, open_storage, storage_url

ATTR_FILE, ATTR_DATA, ATTR_PATH = "fer_opt.study_file", "fer_opt.data", "fer_opt.study_file_path"
ATTR_LABELS = "fer_opt.labels"  # FER+ votes for the data's rows; absent or "": the data's own labels
ATTR_LABELS_SHA256 = "fer_opt.labels_sha256"  # their file's digest (a system attribute): a copy elsewhere is the same votes
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
SPEC_KEYS = {"name", "description", "data", "n_trials", "train", "final", "search_space", "sampler", "pruner", "enqueue",
             "constraints", "objectives", "rungs", "eta"}
PARAM_TYPES = {"categorical": {"choices"}, "int": {"low", "high", "log", "step"}, "float": {"low", "high", "log", "step"}}
SAMPLERS = {"tpe": {"seed", "n_startup_trials"}, "random": {"seed"}, "nsga2": {"seed", "population_size"}}
PRUNERS = {"median": {"n_startup_trials", "n_warmup_steps", "interval_steps"},
           "hyperband": {"min_resource", "reduction_factor"}, "none": set(),
           "pareto-median": {"n_startup_trials", "n_warmup_steps", "among"}}


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    choices: tuple = ()
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None

    def contains(self, value: Any) -> bool:
        if self.type == "categorical":
            return value in self.choices
        return isinstance(value, (int, float)) and self.low <= value <= self.high


@dataclass(frozen=True)
class StudySpec:
    name: str
    n_trials: int
    train: TrainConfig
    space: tuple[Param, ...]
    sampler: dict
    pruner: dict
    enqueue: tuple[dict, ...]
    data: str | None
    text: str
    # How the final model differs from the proxy trials (e.g. all the data, more epochs):
    # the exported config is train + the best trial's parameters + these.
    final: tuple[tuple[str, Any], ...] = ()
    # (measure, lowest, highest) a deployable model must keep to; None: no limit that side
    constraints: Constraints = ()
    # what the search optimises: val_accuracy (maximised) first, then costs to minimise
    objectives: tuple[str, ...] = (METRIC,)
    # fidelities, lowest first (each rung's train fields; rung 0's are in train) and how many trials make one
    # promoted to the next: search/rungs.py
    rungs: tuple[tuple[tuple[str, Any], ...], ...] = ()
    eta: int = DEFAULT_ETA

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1


# --------------------------------------------------------------------------- study files


def _check_keys(where: str, given: dict, allowed: set[str]) -> None:
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise FerOptError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")


def _parse_param(where: str, name: str, raw: Any) -> Param:
    if name not in FIELDS or name == "provenance":
        raise FerOptError(f"{where}.{name}: not a training config field; searchable fields are {', '.join(f for f in FIELDS if f != 'provenance')}")
    if not isinstance(raw, dict) or not isinstance(raw.get("type"), str) or raw["type"] not in PARAM_TYPES:
        raise FerOptError(f"{where}.{name}: expected a mapping with type: categorical, int or float")
    kind = raw["type"]
    _check_keys(f"{where}.{name}", raw, PARAM_TYPES[kind] | {"type"})
    if kind == "categorical":
        choices = raw.get("choices")
        if not isinstance(choices, list) or not choices or not all(
                c is None or isinstance(c, (bool, int, float, str)) for c in choices):
            raise FerOptError(f"{where}.{name}: categorical needs a non-empty list of plain values (numbers, strings)")
        return Param(name, kind, choices=tuple(choices))
    try:
        low, high = float(raw["low"]), float(raw["high"])
    except (KeyError, TypeError, ValueError):
        raise FerOptError(f"{where}.{name}: {kind} needs numeric low and high") from None
    log = bool(raw.get("log", False))
    if low >= high:
        raise FerOptError(f"{where}.{name}: low ({low:g}) must be below high ({high:g})")
    if log and low <= 0:
        raise FerOptError(f"{where}.{name}: log scale needs low > 0 (got {low:g})")
    if kind == "int" and (low != int(low) or high != int(high)):
        raise FerOptError(f"{where}.{name}: int bounds must be whole numbers")
    step = raw.get("step")
    if step is not None and log:
        raise FerOptError(f"{where}.{name}: step and log cannot be combined")
    return Param(name, kind, low=low, high=high, log=log, step=float(step) if step is not None else None)


def parse_spec(text: str, where: str = "study file") -> StudySpec:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise FerOptError(f"{where}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise FerOptError(f"{where}: expected a YAML mapping with name, n_trials, train, search_space, sampler, pruner")
    _check_keys(where, raw, SPEC_KEYS)
    for key in ("name", "n_trials", "search_space"):
        if key not in raw:
            raise FerOptError(f"{where}: missing key '{key}'")
    if not isinstance(raw["name"], str) or not raw["name"].strip():
        raise FerOptError(f"{where}: name must be a non-empty string")
    if not isinstance(raw["n_trials"], int) or isinstance(raw["n_trials"], bool) or raw["n_trials"] < 1:
        raise FerOptError(f"{where}: n_trials must be a positive integer (the study's total trial budget)")
    for key in ("train", "final", "sampler", "pruner"):
        if raw.get(key) is not None and not isinstance(raw[key], dict):
            raise FerOptError(f"{where}: {key} must be a mapping")
    if raw.get("enqueue") is not None and not isinstance(raw["enqueue"], list):
        raise FerOptError(f"{where}: enqueue must be a list of parameter mappings")
    if raw.get("data") is not None and not isinstance(raw["data"], str):
        raise FerOptError(f"{where}: data must be a path")
    train = config_from_dict(raw.get("train") or {}, f"{where}: train")
    space_raw = raw["search_space"]
    if not isinstance(space_raw, dict) or not space_raw:
        raise FerOptError(f"{where}: search_space must map parameter names to their ranges")
    space = tuple(_parse_param(f"{where}: search_space", name, value) for name, value in space_raw.items())
    for p in space:  # every corner of the space must make a valid config
        for value in (p.choices or (p.low, p.high)):
            config_from_dict({**train.to_dict(), p.name: value}, f"{where}: search_space.{p.name}")
    sampler = dict(raw.get("sampler") or {"type": "tpe"})
    pruner = dict(raw.get("pruner") or {"type": "median"})
    for what, table, value in (("sampler", SAMPLERS, sampler), ("pruner", PRUNERS, pruner)):
        if not isinstance(value.get("type"), str) or value["type"] not in table:
            raise FerOptError(f"{where}: {what}.type must be one of {', '.join(table)}")
        _check_keys(f"{where}: {what}", value, table[value["type"]] | {"type"})
    enqueue = tuple(raw.get("enqueue") or ())
    names = {p.name for p in space}
    objectives = parse_objectives(where, raw.get("objectives"))
    ladder, eta = rungs.parse(where, raw, train, names, objectives)
    if ladder:
        train = train.replace(**dict(ladder[0]))
    for i, params in enumerate(enqueue):
        if not isinstance(params, dict) or set(params) - names:
            raise FerOptError(f"{where}: enqueue[{i}] must set only search-space parameters ({', '.join(sorted(names))})")
        for p in space:
            if p.name in params and not p.contains(params[p.name]):
                bounds = list(p.choices) if p.type == "categorical" else f"[{p.low:g}, {p.high:g}]"
                raise FerOptError(f"{where}: enqueue[{i}]: {p.name} {params[p.name]!r} is outside the search space {bounds}; "
                                  "widen the space or change the enqueued value")
        config_from_dict({**train.to_dict(), **params}, f"{where}: enqueue[{i}]")
    final = dict(raw.get("final") or {})
    searched = sorted(set(final) & names)
    if searched:
        raise FerOptError(f"{where}: final sets {', '.join(searched)}, which the search chooses; final is for what "
                          "differs between the proxy trials and the final fit (train_subset, val_subset, epochs, ...)")
    config_from_dict({**train.to_dict(), **final}, f"{where}: final")
    if len(objectives) > 1 and "pruner" not in raw:
        pruner = {"type": "none"}
    pruners.check(where, pruner, objectives)
    spec = StudySpec(raw["name"], raw["n_trials"], train, space, sampler, pruner, enqueue, raw.get("data"), text,
                     tuple(final.items()), parse_constraints(where, raw.get("constraints")), objectives,
                     rungs=ladder, eta=eta)
    try:  # build them once here, so that a bad option fails now and not in every worker
        make_sampler(spec)
        make_pruner(spec)
    except (TypeError, ValueError) as e:
        raise FerOptError(f"{where}: bad sampler or pruner option ({e})") from None
    return spec


def load_spec(path: str | Path) -> StudySpec:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FerOptError(f"{path}: no such study file; see studies/ for examples") from None
    return parse_spec(text, str(path))


def suggest(trial: optuna.Trial, space: tuple[Param, ...]) -> dict[str, Any]:
    """Every `trial.suggest_*` of the project, driven by the study file."""
    params: dict[str, Any] = {}
    for p in space:
        if p.type == "categorical":
            params[p.name] = trial.suggest_categorical(p.name, list(p.choices))
        elif p.type == "int":
            params[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
        else:
            params[p.name] = trial.suggest_float(p.name, p.low, p.high, step=p.step, log=p.log)
    return params


def make_sampler(spec: StudySpec, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
    """Workers offset the seed, so that parallel workers do not draw identical startup trials."""
    cfg = {k: v for k, v in spec.sampler.items() if k != "type"}
    if cfg.get("seed") is not None:
        cfg["seed"] = int(cfg["seed"]) + seed_offset
    if spec.sampler["type"] == "random":
        return optuna.samplers.RandomSampler(**cfg)
    if spec.sampler["type"] == "nsga2":
        return optuna.samplers.NSGAIISampler(**cfg)
    if spec.multi_objective:
        return pruners.MultiObjectiveTPESampler(**cfg)
    return optuna.samplers.TPESampler(**cfg)


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    cfg = {k: v for k, v in spec.pruner.items() if k != "type"}
    kind = spec.pruner["type"]
    if kind == "median":
        return optuna.pruners.MedianPruner(**cfg)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(max_resource=spec.train.epochs, **cfg)
    if kind == "pareto-median":
        return pruners.ParetoMedianPruner(spec.objectives[1:], spec.train.epochs, **cfg)
    return optuna.pruners.NopPruner()


# --------------------------------------------------------------------------- studies in a storage


def study_file_text(study: optuna.Study) -> str | None:
    """The study file stored with the study. It is a system attribute, so that `optuna studies`
    and `optuna trials` stay readable; studies created before that kept it in the user attributes."""
    stored = study_system_attrs(study).get(ATTR_FILE)
    return stored if stored is not None else study.user_attrs.get(ATTR_FILE)


def load_study(name: str, storage: optuna.storages.BaseStorage) -> tuple[optuna.Study, StudySpec]:
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise FerOptError(f"no study named {name!r} in this storage (it has: {', '.join(names) or 'none'}); "
                          "create it from a study file first") from None
    text = study_file_text(study)
    if rungs.ATTR_RUNG in study.user_attrs:
        root = name.rpartition("/rung-")[0]
        raise FerOptError(f"study {name!r} is rung {study.user_attrs[rungs.ATTR_RUNG]} of study {root!r}; name that one")
    if text is None:
        raise FerOptError(f"study {name!r} was not created by fer-optuna (no study file stored with it)")
    spec = parse_spec(text, f"study {name!r}")
    return study, spec


def single_study_name(storage: optuna.storages.BaseStorage) -> str:
    names = rungs.roots(optuna.get_all_study_names(storage))
    if len(names) != 1:
        raise FerOptError(f"the storage holds {len(names)} studies ({', '.join(names) or 'none'}); name the study",
                          flag="--study")
    return names[0]


# --------------------------------------------------------------------------- commands


def resolve_data(data: str | None, spec: StudySpec, spec_dir: Path) -> str:
    path = data or spec.data
    if not path:
        raise FerOptError("no data path: give one (data=PATH) or put data: in the study file", flag="--data")
    resolved = Path(path).expanduser()
    if not resolved.is_absolute() and not data:
        resolved = spec_dir / resolved  # a study file's data: is relative to the file
    return str(resolved.resolve())


def _sha256(labels: str | Path) -> str:
    path = Path(labels).expanduser()
    if not path.is_file():
        raise FerOptError(f"{path}: no such votes file; give FER+'s fer2013new.csv", flag="--labels")
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def study_labels(study: optuna.Study, labels: str | Path | None = None) -> str | None:
    """The FER+ votes every command on `study` uses: the study's own, or `labels` (this machine's copy) where they
    are the same votes (the same path, or a file with the same bytes). Other votes, or votes for a study of the
    data's own labels, are refused: the labels are part of the study, as its study file is."""
    stored = study.user_attrs.get(ATTR_LABELS) or None
    if not labels:
        return stored
    given = str(Path(labels).expanduser().resolve())
    if stored and (given == stored or _sha256(given) == study_system_attrs(study).get(ATTR_LABELS_SHA256)):
        return given
    raise FerOptError(f"study {study.study_name!r} is labelled by {f'the FER+ votes in {stored}' if stored else 'its data'}, "
                      f"not by labels={labels}; leave labels out to use the study's, or give the votes another study "
                      "(a new name, or replace=True to start this one over)", flag="--labels")


def load_data(study: optuna.Study, data: str | None = None, labels: str | None = None,
              options: DataOptions | None = None) -> fer_data.FerData:
    """The study's data (or `data`, this machine's copy), labelled by its votes (or `labels`, this machine's copy)."""
    return fer_data.load(data or study.user_attrs[ATTR_DATA], options=options, labels=study_labels(study, labels))


def _check_teachers(spec: StudySpec, spec_path: str | Path, data: str, labels: str | None,
                    options: DataOptions | None) -> None:
    """Refuse now, not after the search, a teacher the study file names whose classes are not the data's."""
    named = {"train": [spec.train.teacher], "final": [dict(spec.final).get("teacher")],
             "search_space": [c for p in spec.space if p.name == "teacher" for c in p.choices]}
    teachers = {t: section for section, names in named.items() for t in names if t}
    if not teachers or not (labels or Path(data).exists()):
        return  # without the data on this machine, the workers check it as they load the teacher
    classes = fer_data.classes_of(data, labels, options)
    for teacher, section in teachers.items():
        distill.teacher_checkpoint(teacher, classes, f"{spec_path}, {section}: ")


def create(spec_path: str | Path, url: str | None = None, name: str | None = None, data: str | None = None,
           skip_if_exists: bool = False, replace: bool = False, artifacts: str | None = None,
           options: StoreOptions | None = None, labels: str | None = None,
           data_options: DataOptions | None = None) -> tuple[optuna.Study, bool]:
    """Create the study (True) or find the identical one (False) from a study file: a path, or the name
    of a shipped one (see shipped.py).

    `data`: the data path stored with the study, else the study file's data: (relative to the file);
    `labels`: FER+ votes for its rows, stored beside it (with their digest) and part of the study, as its study
    file is: finding it again takes no labels (the study's) or the same votes (see study_labels).
    A teacher the study file names is checked against the data's classes here, before anything is written.
    `artifacts`: the study's artifact store (else a folder beside a SQLite file, else none); checked
    before anything is written, and recorded without credentials.
    """
    from .artifacts import ATTR_ARTIFACTS, ArtifactStore, default_url

    spec_path = shipped.find(spec_path)
    spec = load_spec(spec_path)
    name = name or spec.name
    data_path = resolve_data(data, spec, Path(spec_path).parent)
    storage = open_storage(url, options=options)
    store_url = artifacts or default_url(storage_url(url))
    exists = name in optuna.get_all_study_names(storage)
    if exists:
        existing = optuna.load_study(study_name=name, storage=storage)
        same = study_file_text(existing) == spec.text
        if same and skip_if_exists and not replace:
            _check_teachers(spec, spec_path, data_path, study_labels(existing, labels), data_options)
            return existing, False
        if not replace:
            why = "already exists" if same else "already exists with a different study file"
            fix = ("use it with skip_if_exists=True", "--skip-if-exists") if same else \
                ("delete it and start over with replace=True, or give a new name", "--replace or --name NEW")
            raise FerOptError(f"study {name!r} {why}; {fix[0]}", flag=fix[1])
    labels_sha256 = _sha256(labels) if labels else ""
    _check_teachers(spec, spec_path, data_path, labels, data_options)
    if exists:
        for old in [name, *rungs.of(name, optuna.get_all_study_names(storage))]:
            optuna.delete_study(study_name=old, storage=storage)
    if store_url:
        ArtifactStore(store_url, options).prepare()
    study = optuna.create_study(study_name=name, storage=storage, sampler=make_sampler(spec), pruner=make_pruner(spec),
                                directions=["maximize"] + ["minimize"] * (len(spec.objectives) - 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(spec.objectives))  # the dashboard's axes read val_accuracy, not "Objective 0"
    study_id = storage.get_study_id_from_name(name)
    storage.set_study_system_attr(study_id, ATTR_FILE, spec.text)
    if store_url:
        storage.set_study_system_attr(study_id, ATTR_ARTIFACTS, store_url)
    if labels:
        storage.set_study_system_attr(study_id, ATTR_LABELS_SHA256, labels_sha256)
    from optuna_dashboard import save_note

    save_note(study, f"Created by `fer-opt create-study` from `{spec_path}`:\n\n```yaml\n{spec.text.rstrip()}\n```\n")
    study.set_user_attr(ATTR_DATA, data_path)
    study.set_user_attr(ATTR_LABELS, str(Path(labels).expanduser().resolve()) if labels else "")
    study.set_user_attr(ATTR_PATH, str(spec_path))
    for params in spec.enqueue:
        study.enqueue_trial(params, user_attrs=rungs.baseline_attrs(spec), skip_if_exists=True)
    return study, True


def status(study: optuna.Study, spec: StudySpec) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    by_state = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    done = [t for t in trials if t.state in FINISHED and t.datetime_complete]
    started = [t.datetime_start for t in trials if t.datetime_start]
    hours = 0.0
    if done and started:
        hours = (max(t.datetime_complete for t in done) - min(started)).total_seconds() / 3600
    best = next(iter(ranked(study)), None)
    return {
        "study": study.study_name,
        "budget": spec.n_trials,
        "trials": by_state,
        "constraints": [{"measure": n, "min": low, "max": high} for n, low, high in spec.constraints],
        "infeasible": sum(t.state == TrialState.COMPLETE and not feasible(t) for t in trials),
        "best": None if best is None else {"number": best.number, "val_accuracy": best.values[0], "params": best.params,
                                           "epochs_run": best.user_attrs.get("epochs_run"), "costs": costs_of(best)},
        "front": [{"number": t.number, **dict(zip(spec.objectives, t.values)), "costs": costs_of(t)}
                  for t in front(study)] if spec.multi_objective else None,
        "running": [
            {"number": t.number, "worker": t.user_attrs.get("worker"), "device": t.user_attrs.get("device"),
             "epoch": t.user_attrs.get("epochs_run", 0), "epochs": pruners.planned_epochs(t, spec.train.epochs)}
            for t in trials if t.state == TrialState.RUNNING
        ],
        "trials_per_hour": len(done) / hours if hours > 0 else None,
        "pruning": pruners.savings(study, spec.pruner["type"], spec.train.epochs),
        "comparison": comparison(study, spec),
        **({"rungs": rungs.summary(study, spec)} if spec.rungs else {}),
    }


def _epochs(trial: optuna.trial.FrozenTrial) -> int:
    return max(trial.intermediate_values, default=0)


def comparison(study: optuna.Study, spec: StudySpec) -> dict[str, Any] | None:
    """What the search bought: the best trial against the study file's first enqueued configuration
    (the original's), both trained the same way, and what pruning saved. None before both exist."""
    trials = study.get_trials(deepcopy=False)
    complete = ranked(study)
    baseline = spec.enqueue[0] if spec.enqueue else None
    original = next((t for t in trials if t.state in FINISHED and baseline is not None
                     and all(t.params.get(k) == v for k, v in baseline.items())), None)
    if not complete or original is None:
        return None
    best = complete[0]
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    finished = [t for t in trials if t.state in FINISHED]

    def row(t):
        value = t.values[0] if t.state == TrialState.COMPLETE else t.intermediate_values[_epochs(t)]
        return {"trial": t.number, "val_accuracy": value, "epochs": _epochs(t), "state": t.state.name.lower(),
                "params": t.params}

    spent = sum(_epochs(t) for t in finished)
    saved = sum(pruners.planned_epochs(t, spec.train.epochs) - _epochs(t) for t in pruned)
    return {"original": row(original), "best": row(best), "gain": best.values[0] - row(original)["val_accuracy"],
            "trials": len(finished), "pruned": len(pruned), "epochs_run": spent, "epochs_saved_by_pruning": saved,
            "epochs_without_pruning": spent + saved}


def format_comparison(c: dict[str, Any] | None) -> list[str]:
    if c is None:
        return []
    o, b = c["original"], c["best"]
    lines = ["what the search bought (same data, same epochs per trial):",
             f"  original config  trial {o['trial']:>3}: val accuracy {o['val_accuracy']:.4f}, {o['epochs']} epochs"
             + (" (pruned)" if o["state"] == "pruned" else ""),
             f"  best found       trial {b['trial']:>3}: val accuracy {b['val_accuracy']:.4f}, {b['epochs']} epochs"
             f"  ({100 * c['gain']:+.1f} points)"]
    total = c["epochs_without_pruning"]
    share = f" ({c['epochs_saved_by_pruning'] / total:.0%})" if total else ""
    lines.append(f"  {c['trials']} trials, {c['pruned']} pruned: {c['epochs_run']} epochs run, "
                 f"{c['epochs_saved_by_pruning']} saved by pruning{share}")
    return lines


def format_status(info: dict[str, Any], url: str) -> str:
    t = info["trials"]
    finished = t["complete"] + t["pruned"]
    lines = [f"study {info['study']} on {mask_url(url)}",
             f"trials: {t['complete']} complete, {t['pruned']} pruned, {t['fail']} failed, {t['running']} running, "
             f"{t['waiting']} waiting  ({finished}/{info['budget']} of the budget)"]
    limits = [f"{c['measure']} " + " and ".join(f"{word} {c[key]:g}" for key, word in (("min", ">="), ("max", "<="))
                                                  if c[key] is not None) for c in info["constraints"]]
    if limits:
        lines.append(f"constraints: {', '.join(limits)}; {info['infeasible']} complete trial(s) broke them")
    best = info["best"]
    if best:
        lines.append(f"best{' feasible' if limits else ''}: trial {best['number']}, val accuracy {best['val_accuracy']:.4f}"
                     + (f"  ({format_costs(best['costs'])})" if best["costs"] else ""))
        lines += [f"  {k}: {v}" for k, v in best["params"].items()]
    if info["front"] is not None:
        lines += format_front(info["front"])
    for r in info["running"]:
        lines.append(f"running: trial {r['number']} on {r['worker']} ({r['device']}), epoch {r['epoch']}/{r['epochs']}")
    if info["trials_per_hour"]:
        lines.append(f"throughput: {info['trials_per_hour']:.1f} trials/hour")
    if info["pruning"]["pruner"] != "none":
        lines.append(pruners.format_savings(info["pruning"]))
    return "\n".join(lines + format_comparison(info["comparison"]) + rungs.format_summary(info.get("rungs")))


def provenance(study: optuna.Study, trial: optuna.trial.FrozenTrial, url: str) -> dict[str, Any]:
    """Where an exported config or model came from, kept inside it."""
    return {"study": study.study_name, "study_file": study.user_attrs.get(ATTR_PATH), "trial": trial.number,
            "val_accuracy": round(trial.values[0], 6), **costs_of(trial), **rungs.provenance(study), "storage": mask_url(url),
            "exported": time.strftime("%Y-%m-%d %H:%M:%S")}


def export(study: optuna.Study, spec: StudySpec, out: str | Path, top: int = 1, url: str = "",
           rule: str | None = None, chosen: optuna.trial.FrozenTrial | None = None) -> list[Path]:
    """Write the `top` best feasible trials' full training configs, readable by `fer-opt train --config`;
    with a rule (see `pick`), the most accurate trial that keeps to it (`chosen`, if already picked)."""
    complete = ranked(study)
    if not complete:
        broke = " that keeps to the constraints" if spec.constraints else ""
        raise FerOptError(f"study {study.study_name!r} has no complete trial{broke} yet; run 'fer-opt worker' first")
    if rule:
        complete = [chosen or pick(study, rule)]
    out = Path(out)
    paths = [out] if top == 1 else [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(1, top + 1)]
    final = dict(spec.final)
    proxy = {k: getattr(spec.train, k) for k in final}
    for path, trial in zip(paths, complete):
        origin = {**provenance(study, trial, url), **({"proxy": proxy} if final else {})}
        cfg = config_from_dict({**spec.train.to_dict(), **trial.params, **final, "provenance": origin})
        header = f"# best trial {trial.number} of study {study.study_name}: val accuracy {trial.values[0]:.4f}"
        if spec.constraints or rule:
            header += f" ({format_costs(costs_of(trial))}; the best " + (f"of those with {rule}" if rule else "feasible") + ")"
        if final:
            # "teacher none", not "teacher " with nothing after it
            header += ("\n# found on the proxy " + ", ".join(f"{k} {v if v != '' else 'none'}" for k, v in proxy.items())
                       + "; the study file's final: section sets " + ", ".join(f"{k} {v}" for k, v in final.items()))
        dump_config(cfg, path, header)
    return paths[: len(complete)]


def copy(from_url: str, to_url: str, name: str | None = None, to_name: str | None = None,
         options: StoreOptions | None = None) -> optuna.Study:
    """Copy a study, trials and attributes intact, e.g. from the SQLite file to PostgreSQL."""
    source = open_storage(from_url, options=options)
    name = name or single_study_name(source)
    study, _ = load_study(name, source)
    running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    if running:
        raise FerOptError(f"study {name!r} has {running} running trial(s); stop its workers before copying it")
    target = open_storage(to_url, options=options)
    to_name = to_name or name
    if to_name in optuna.get_all_study_names(target):
        raise FerOptError(f"{mask_url(storage_url(to_url))} already has a study {to_name!r}; give a new name (to_name)",
                          flag="--to-name")
    for rung in [name, *rungs.of(name, optuna.get_all_study_names(source))]:  # its rungs' studies go with it
        optuna.copy_study(from_study_name=rung, from_storage=source, to_storage=target,
                          to_study_name=to_name + rung[len(name):])
    return optuna.load_study(study_name=to_name, storage=target)
