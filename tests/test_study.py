import sqlite3

import optuna
import pytest
import sqlalchemy

from conftest import ROOT, TINY, fer_opt, tiny_study
from fer_optuna.search import storage as fer_storage
from fer_optuna.search import study as fer_study
from fer_optuna.training.config import load_config
from fer_optuna.errors import FerOptError
from fer_optuna.options import StoreOptions



@pytest.mark.parametrize("path", sorted((ROOT / "studies").glob("*.yaml")) + [TINY], ids=lambda p: p.name)
def test_shipped_study_files_parse(path):
    spec = fer_study.load_spec(path)
    # A fine-tune keeps its start model's network (hidden_dim fixed by the weights): it searches how to train it.
    expected = {"lr", "epochs", "freeze"} if spec.train.init else {"batch_size", "dropout", "hidden_dim", "lr", "weight_decay"}
    assert {p.name for p in spec.space} >= expected
    assert spec.n_trials >= 1


def test_cnn3_study_is_the_original_sweep():
    spec = fer_study.load_spec(ROOT / "studies" / "fer2013-cnn3.yaml")
    space = {p.name: p for p in spec.space}
    assert space["batch_size"].choices == (32, 64, 128, 256) and space["hidden_dim"].choices == (64, 128, 256, 512)
    assert (space["lr"].low, space["lr"].high, space["lr"].log) == (1e-4, 1e-2, True)
    assert (space["weight_decay"].low, space["weight_decay"].high) == (1e-6, 1e-3)
    assert spec.enqueue == ({"batch_size": 128, "dropout": 0.2, "hidden_dim": 64, "lr": 1e-3, "weight_decay": 1e-6},)
    assert spec.sampler["type"] == "tpe" and spec.pruner["type"] == "median"


BASE = TINY.read_text()
MALFORMED = {
    "unknown key": (BASE + "colour: red\n", r"unknown key\(s\) colour"),
    "unknown model": (BASE.replace("model: cnn3", "model: vit"), r"'model' is 'vit'"),
    "bad bounds": (BASE.replace("low: 0.1, high: 0.5", "low: 0.6, high: 0.5"), r"dropout: low \(0.6\) must be below high \(0.5\)"),
    "log of zero": (BASE.replace("low: 1.0e-6", "low: 0.0"), r"weight_decay: log scale needs low > 0"),
    "unknown param": (BASE.replace("  dropout:", "  dropuot:"), r"search_space.dropuot: not a training config field"),
    "out of range value": (BASE.replace("high: 0.5}", "high: 1.5}"), r"search_space.dropout.*'dropout' is 1.5"),
    "unknown pruner": (BASE.replace("type: median", "type: asha"), r"pruner.type must be one of"),
    "param key": (BASE.replace("log: true}", "log: true, scale: 2}", 1), r"unknown key\(s\) scale"),
    "enqueue outside space": (BASE.replace("weight_decay: 1.0e-6}\n", "weight_decay: 1.0e-6, epochs: 9}\n"), r"enqueue\[0\] must set only"),
    "enqueued value outside bounds": (BASE.replace("dropout: 0.2,", "dropout: 0.7,"),
                                      r"enqueue\[0\]: dropout 0.7 is outside the search space \[0.1, 0.5\]"),
    "enqueued choice not offered": (BASE.replace("hidden_dim: 64, lr", "hidden_dim: 96, lr"),
                                    r"enqueue\[0\]: hidden_dim 96 is outside the search space \[64, 128\]"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_study_files_are_refused_with_the_key(case):
    text, message = MALFORMED[case]
    with pytest.raises(FerOptError, match=message):
        fer_study.parse_spec(text, "s.yaml")


def test_mask_url_hides_the_password():
    masked = fer_storage.mask_url("postgresql+psycopg://fer:s3cret@db:5432/optuna")
    assert "s3cret" not in masked and "fer:***@db:5432/optuna" in masked


def test_create_study_is_idempotent_and_guards_its_name(tmp_path, sample_csv):
    url = f"sqlite:///{tmp_path}/s.db"
    study, new = fer_study.create(TINY, url, data=str(sample_csv))
    assert new and fer_study.study_file_text(study) == TINY.read_text()
    assert fer_study.ATTR_FILE not in study.user_attrs, "`optuna studies` prints user attributes: keep them short"
    assert study.metric_names == ["val_accuracy"]
    assert study.user_attrs[fer_study.ATTR_DATA] == str(sample_csv.resolve())
    assert len(study.get_trials(states=(optuna.trial.TrialState.WAITING,))) == 1
    with pytest.raises(FerOptError, match="already exists; use it with skip_if_exists=True"):
        fer_study.create(TINY, url, data=str(sample_csv))
    again, new = fer_study.create(TINY, url, data=str(sample_csv), skip_if_exists=True)
    assert not new and len(again.trials) == 1, "the baseline trial is enqueued once"
    other = tmp_path / "other.yaml"
    tiny_study(other, n_trials=9)
    with pytest.raises(FerOptError, match="different study file; delete it and start over with replace=True"):
        fer_study.create(other, url, data=str(sample_csv), skip_if_exists=True)
    replaced, new = fer_study.create(other, url, data=str(sample_csv), replace=True)
    assert new and fer_study.load_study("tiny", fer_storage.open_storage(url))[1].n_trials == 9
    with pytest.raises(FerOptError, match=r"^no data path: give one \(data=PATH\) or put data: in the study file$") as err:
        fer_study.create(TINY, f"sqlite:///{tmp_path}/none.db")  # the CLI adds --data
    assert err.value.flag == "--data"


def test_unreachable_storage_is_one_line_with_masked_password():
    proc = fer_opt("status", "--storage", "postgresql+psycopg://fer:hunter2@127.0.0.1:1/optuna", check=False,
                   env={"FER_OPT_DB_RETRY_SECONDS": "1"})  # a refused connection is waited for: not long here
    assert proc.returncode == 2 and "hunter2" not in proc.stderr + proc.stdout
    assert "cannot reach the study storage postgresql+psycopg://fer:***@127.0.0.1:1/optuna" in proc.stderr
    bad = fer_opt("status", "--storage", "mysql://x", check=False)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_a_storage_of_another_optuna_schema_is_one_fix_it_error(tmp_path):
    url = f"sqlite:///{tmp_path}/old.db"
    fer_storage.open_storage(url).engine.dispose()
    with sqlite3.connect(tmp_path / "old.db") as db:
        db.execute("UPDATE alembic_version SET version_num = 'v2.4.0.a'")
    with pytest.raises(FerOptError, match=r"has tables of Optuna schema v2\.4\.0\.a.*`optuna storage upgrade`"):
        fer_storage.open_storage(url)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # ask() outside optimize, to stage two trials
def test_a_heartbeat_that_resumes_after_an_outage_is_not_stale(tmp_path, monkeypatch):
    """Just after a database outage every running trial's heartbeat is old; only one that stays old is stale."""
    storage = fer_storage.open_storage(f"sqlite:///{tmp_path}/s.db", heartbeat=True,
                                       options=StoreOptions(heartbeat_seconds=1))  # grace period 3 s
    study = optuna.create_study(storage=storage)
    live, dead = study.ask(), study.ask()
    for trial in (live, dead):
        storage.record_heartbeat(trial._trial_id)
    with storage.engine.begin() as db:  # both beat last a minute ago, before the outage
        db.execute(sqlalchemy.text("UPDATE trial_heartbeats SET heartbeat = datetime('now', '-60 seconds')"))
    waits = []

    def live_worker_beats_while_waited_for(seconds):
        waits.append(seconds)
        storage.record_heartbeat(live._trial_id)

    monkeypatch.setattr(fer_storage.time, "sleep", live_worker_beats_while_waited_for)
    assert storage._get_stale_trial_ids(study._study_id) == [dead._trial_id]
    assert waits == [2], "stale trials are confirmed two heartbeat intervals later"


def test_export_requires_a_complete_trial(tmp_path, sample_csv):
    url = f"sqlite:///{tmp_path}/s.db"
    fer_opt("create-study", "--config", TINY, "--storage", url, "--data", sample_csv)
    proc = fer_opt("export", "--storage", url, "-o", tmp_path / "b.yaml", check=False)
    assert proc.returncode == 2 and "no complete trial yet" in proc.stderr


PROXY = TINY.read_text().replace("train: {model: cnn3, epochs: 3, seed: 0, equalize: false}", """train: {model: cnn3, epochs: 4, seed: 0, equalize: false, train_subset: 200, val_subset: 100}
final: {train_subset: 0, val_subset: 0, epochs: 20, scheduler: cosine}""")


def _proxy_study(tmp_path):
    spec_path = tmp_path / "proxy.yaml"
    spec_path.write_text(PROXY)
    url = f"sqlite:///{tmp_path}/s.db"
    study, _ = fer_study.create(spec_path, url, data=str(ROOT / "README.md"))
    spec = fer_study.load_spec(spec_path)
    baseline = dict(spec.enqueue[0])
    # The enqueued original runs first (as a worker would), then the search's trials.
    trial = study.ask()
    fer_study.suggest(trial, spec.space)
    for epoch, value in enumerate([0.30, 0.35, 0.38, 0.40], 1):
        trial.report(value, epoch)
    study.tell(trial, 0.40)
    better = {**baseline, "lr": 3e-3, "dropout": 0.3}
    dists = study.trials[0].distributions
    for params, values, prune in ((better, [0.33, 0.41, 0.45, 0.47], False),
                                  ({**baseline, "lr": 1e-5}, [0.20], True),
                                  ({**baseline, "lr": 5e-2}, [0.25, 0.28], True)):
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=dists, intermediate_values=dict(enumerate(values, 1)),
            value=None if prune else values[-1],
            state=optuna.trial.TrialState.PRUNED if prune else optuna.trial.TrialState.COMPLETE))
    return study, url


def test_export_writes_the_final_config_not_the_proxy(tmp_path):
    study, url = _proxy_study(tmp_path)
    spec = fer_study.load_spec(tmp_path / "proxy.yaml")
    [path] = fer_study.export(study, spec, tmp_path / "best.yaml", 1, url)
    cfg = load_config(path)
    assert (cfg.train_subset, cfg.val_subset, cfg.epochs, cfg.scheduler) == (0, 0, 20, "cosine")
    assert cfg.lr == 3e-3 and cfg.dropout == 0.3, "the best trial's parameters"
    assert cfg.provenance["trial"] == 1 and cfg.provenance["proxy"] == {
        "train_subset": 200, "val_subset": 100, "epochs": 4, "scheduler": "plateau"}
    header = path.read_text().splitlines()[:2]
    assert header[0].startswith("# best trial 1 of study tiny: val accuracy 0.4700")
    assert header[1] == ("# found on the proxy train_subset 200, val_subset 100, epochs 4, scheduler plateau; "
                         "the study file's final: section sets train_subset 0, val_subset 0, epochs 20, scheduler cosine")


def test_an_exported_header_names_a_proxy_without_a_teacher(tmp_path):
    study, url = _proxy_study(tmp_path)
    spec = fer_study.parse_spec(PROXY.replace("scheduler: cosine}", "scheduler: cosine, teacher: fer2013}"), "s.yaml")
    [path] = fer_study.export(study, spec, tmp_path / "best.yaml", 1, url)
    assert load_config(path).teacher == "fer2013"
    assert "scheduler plateau, teacher none; the study file's final: section sets " in path.read_text()


def test_final_may_not_override_what_the_search_chooses():
    with pytest.raises(FerOptError, match="final sets lr, which the search chooses"):
        fer_study.parse_spec(PROXY.replace("scheduler: cosine}", "scheduler: cosine, lr: 0.1}"), "s.yaml")
    with pytest.raises(FerOptError, match="final: .*epochs"):
        fer_study.parse_spec(PROXY.replace("epochs: 20", "epochs: 0"), "s.yaml")


def test_comparison_counts_what_the_search_bought(tmp_path):
    study, url = _proxy_study(tmp_path)
    c = fer_study.comparison(study, fer_study.load_spec(tmp_path / "proxy.yaml"))
    assert c["original"]["trial"] == 0 and c["original"]["val_accuracy"] == 0.40 and c["original"]["epochs"] == 4
    assert c["best"]["trial"] == 1 and c["best"]["val_accuracy"] == 0.47
    assert c["gain"] == pytest.approx(0.07)
    assert (c["trials"], c["pruned"], c["epochs_run"], c["epochs_saved_by_pruning"]) == (4, 2, 11, 5)
    text = fer_opt("status", "--storage", url).stdout
    assert "what the search bought" in text and "(+7.0 points)" in text
    assert "4 trials, 2 pruned: 11 epochs run, 5 saved by pruning (31%)" in text
