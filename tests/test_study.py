
import optuna
import pytest

from conftest import ROOT, fer_opt
from fer_optuna import study as fer_study
from fer_optuna.errors import FerOptError

TINY = ROOT / "tests" / "studies" / "tiny.yaml"


@pytest.mark.parametrize("path", sorted((ROOT / "studies").glob("*.yaml")) + [TINY], ids=lambda p: p.name)
def test_shipped_study_files_parse(path):
    spec = fer_study.load_spec(path)
    assert {p.name for p in spec.space} >= {"batch_size", "dropout", "hidden_dim", "lr", "weight_decay"}
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
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_study_files_are_refused_with_the_key(case):
    text, message = MALFORMED[case]
    with pytest.raises(FerOptError, match=message):
        fer_study.parse_spec(text, "s.yaml")


def test_mask_url_hides_the_password():
    masked = fer_study.mask_url("postgresql+psycopg://fer:s3cret@db:5432/optuna")
    assert "s3cret" not in masked and "fer:***@db:5432/optuna" in masked


def test_create_study_is_idempotent_and_guards_its_name(tmp_path, sample_csv):
    url = f"sqlite:///{tmp_path}/s.db"
    study, new = fer_study.create(TINY, url, data=str(sample_csv))
    assert new and study.user_attrs[fer_study.ATTR_FILE] == TINY.read_text()
    assert study.user_attrs[fer_study.ATTR_DATA] == str(sample_csv.resolve())
    assert len(study.get_trials(states=(optuna.trial.TrialState.WAITING,))) == 1
    with pytest.raises(FerOptError, match="already exists; pass --skip-if-exists"):
        fer_study.create(TINY, url, data=str(sample_csv))
    again, new = fer_study.create(TINY, url, data=str(sample_csv), skip_if_exists=True)
    assert not new and len(again.trials) == 1, "the baseline trial is enqueued once"
    other = tmp_path / "other.yaml"
    other.write_text(TINY.read_text().replace("n_trials: 8", "n_trials: 9"))
    with pytest.raises(FerOptError, match="different study file; pass --replace"):
        fer_study.create(other, url, data=str(sample_csv), skip_if_exists=True)
    replaced, new = fer_study.create(other, url, data=str(sample_csv), replace=True)
    assert new and fer_study.load_study("tiny", fer_study.open_storage(url))[1].n_trials == 9


def test_unreachable_storage_is_one_line_with_masked_password():
    proc = fer_opt("status", "--storage", "postgresql+psycopg://fer:hunter2@127.0.0.1:1/optuna", check=False)
    assert proc.returncode == 2 and "hunter2" not in proc.stderr + proc.stdout
    assert "cannot reach the study storage postgresql+psycopg://fer:***@127.0.0.1:1/optuna" in proc.stderr
    bad = fer_opt("status", "--storage", "mysql://x", check=False)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_export_requires_a_complete_trial(tmp_path, sample_csv):
    url = f"sqlite:///{tmp_path}/s.db"
    fer_opt("create-study", "--config", TINY, "--storage", url, "--data", sample_csv)
    proc = fer_opt("export", "--storage", url, "-o", tmp_path / "b.yaml", check=False)
    assert proc.returncode == 2 and "no complete trial yet" in proc.stderr
