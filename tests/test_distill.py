import hashlib
import re

import numpy as np
import pytest
import torch

from conftest import fer_opt
from fer_optuna.errors import FerOptError
from fer_optuna.search import shipped
from fer_optuna.search.study import load_spec, parse_spec
from fer_optuna.training import augment, checkpoints, data, distill, trainer
from fer_optuna.training.config import TrainConfig
from fer_optuna.training.models import build_model

TINY = dict(model="mlp", hidden_dim=16, epochs=2, batch_size=8, equalize=False, seed=0)


def fake_teacher(path, seed=0, classes=data.CLASSES, **config):
    """A small checkpoint to teach with: an mlp with its own pixel pipeline (equalised unless told)."""
    torch.manual_seed(seed)
    cfg = TrainConfig(**{"model": "mlp", "hidden_dim": 8, "equalize": True, **config})
    model = build_model(cfg.model, cfg.dropout, cfg.hidden_dim, cfg.width)
    checkpoints.save_checkpoint(path, model, cfg)
    if classes != data.CLASSES:
        ckpt = checkpoints.read_checkpoint(path)
        checkpoints.atomic_save({**ckpt, "classes": list(classes)}, path)
    return path


def test_the_teachers_answers_are_cached_and_recomputed_when_the_teacher_or_the_data_changes(tmp_path, monkeypatch):
    images = np.random.default_rng(0).integers(0, 256, (20, 48, 48), dtype=np.uint8)
    teacher = str(fake_teacher(tmp_path / "t.pt"))
    computed, said = [], []
    real = distill.answers
    monkeypatch.setattr(distill, "answers", lambda *a, **k: computed.append(1) or real(*a, **k))

    def load(imgs):
        return distill.load_teacher(teacher, imgs, torch.device("cpu"), False, tmp_path / "cache", said.append).logits

    first = load(images)
    assert len(computed) == 1 and first.shape == (20, 7)
    assert "computing its answers" in said[0] and "computed in" in said[1] and len(said) == 2, "before and after the pass"
    assert np.array_equal(load(images), first) and len(computed) == 1, "the second run reads the cache"
    assert "from the cache" in said[-1] and len(said) == 3, "one line from the cache"
    changed = images.copy()
    changed[3, 10, 10] ^= 1
    load(changed)
    assert len(computed) == 2, "other data: computed again"
    fake_teacher(tmp_path / "t.pt", seed=1)
    assert not np.array_equal(load(images), first) and len(computed) == 3, "another teacher file: computed again"


def test_the_teacher_sees_its_own_pixel_pipeline_and_with_two_views_the_mirror_too(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (5, 48, 48), dtype=np.uint8)
    ckpt = checkpoints.read_checkpoint(fake_teacher(tmp_path / "t.pt", smooth=0.5))
    model, _ = checkpoints.model_from_checkpoint(ckpt, torch.device("cpu"))
    x = augment.smooth(augment.equalize(torch.from_numpy(images).unsqueeze(1)), 0.5)
    x = augment.normalize(augment.to_float(x))
    for views, expected in ((1, model(x)), (2, (model(x) + model(x.flip(-1))) / 2)):
        got = distill.answers(ckpt, images, torch.device("cpu"), bf16=False, views=views)
        assert torch.allclose(torch.from_numpy(got), expected, atol=1e-5), views
    assert distill.VIEWS == 1, "training's teacher answers for the image alone (docs/studies.md)"


def test_alpha_zero_trains_the_same_weights_as_no_teacher_and_the_checkpoint_names_its_teacher(
        tmp_path, three_split_csv):
    loaded = data.load(three_split_csv)
    teacher = fake_teacher(tmp_path / "t.pt")
    weights = {}
    for name, extra in {"none": {}, "alpha0": {"teacher": str(teacher), "distill_alpha": 0.0},
                        "alpha": {"teacher": str(teacher), "mixup": 0.4}}.items():
        trainer.train(TrainConfig(**TINY, **extra), loaded, device=torch.device("cpu"),
                      checkpoint=tmp_path / f"{name}.pt", log=None)
        weights[name] = checkpoints.read_checkpoint(tmp_path / f"{name}.pt")
    none, alpha0 = (weights[k]["state_dict"] for k in ("none", "alpha0"))
    assert all(torch.equal(none[k], alpha0[k]) for k in none), "alpha 0 must be the run without a teacher"
    assert not all(torch.equal(none[k], weights["alpha"]["state_dict"][k]) for k in none), "a teacher changes the run"
    sha = hashlib.sha256(teacher.read_bytes()).hexdigest()
    assert weights["alpha"]["meta"]["teacher"] == {"name": str(teacher), "sha256": sha, "views": distill.VIEWS}
    assert "teacher" not in weights["none"]["meta"]


def test_a_study_can_search_the_teacher_and_the_config_checks_its_fields():
    spec = parse_spec("name: d\nn_trials: 2\ntrain: {model: cnn3}\nsearch_space:\n"
                      "  teacher: {type: categorical, choices: ['', fer2013]}\n"
                      "  distill_alpha: {type: float, low: 0.0, high: 0.9}\n"
                      "  distill_temperature: {type: float, low: 1.0, high: 8.0}\n")
    assert [p.name for p in spec.space] == ["teacher", "distill_alpha", "distill_temperature"]
    with pytest.raises(FerOptError, match="distill_alpha"):
        TrainConfig(distill_alpha=1.5)


def test_a_teacher_with_other_classes_gets_one_line_and_exit_2(tmp_path, three_split_csv):
    teacher = fake_teacher(tmp_path / "five.pt", classes=("a", "b", "c", "d", "e"))
    out = tmp_path / "m.pt"
    done = fer_opt("train", "--data", three_split_csv, "--out", out, "--epochs", "1", "--set", "model=mlp",
                   "--set", f"teacher={teacher}", check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().count("\n") == 0 and "classes (a, b, c, d, e) are not the student's" in done.stderr
    assert not out.exists() and not checkpoints.state_path(out).exists()
    with pytest.raises(FerOptError, match="teacher 'nope.pt': no such model file"):
        distill.teacher_path("nope.pt")


def test_a_workers_log_says_where_the_teachers_answers_came_from_and_each_epoch_once(tmp_path, sample_csv):
    from conftest import tiny_study
    from fer_optuna.options import Settings
    from fer_optuna.search import storage, study as fer_study, worker

    teacher = fake_teacher(tmp_path / "t.pt", equalize=False)
    spec_file = tiny_study(tmp_path / "taught.yaml", n_trials=1, train={"epochs": 2, "teacher": str(teacher)})
    url = f"sqlite:///{tmp_path}/s.db"
    fer_study.create(spec_file, url, data=str(sample_csv))
    study, spec = fer_study.load_study("tiny", storage.open_storage(url))
    said = []
    settings = Settings.from_env({"FER_OPT_CACHE": str(tmp_path / "cache")})
    opts = worker.WorkerOptions(study="tiny", storage=url, device="cpu", settings=settings)
    objective = worker.Objective(study, spec, data.load(sample_csv), torch.device("cpu"), opts, log=said.append)
    study.optimize(objective, n_trials=1)
    assert any(line.startswith(f"teacher {teacher}: its answers for ") for line in said), said
    epochs = [line for line in said if re.search(r"epoch +\d", line)]
    assert len(epochs) == 2 and all(line.startswith("trial 0 epoch") for line in epochs), "each epoch once, the worker's line"


def test_the_main_job_with_a_teacher_is_the_main_job_with_a_distilled_final_fit():
    """quick-distill.yaml must stay quick.yaml with `teacher:` added to `final:` alone, so that its search is
    quick's, trial for trial, and the two final fits compare like for like."""
    quick, distilled = (load_spec(shipped.find(name)) for name in ("quick", "quick-distill"))
    assert dict(distilled.final) == {**dict(quick.final), "teacher": "fer2013"}
    for field in ("train", "n_trials", "space", "sampler", "pruner", "enqueue", "constraints", "objectives"):
        assert getattr(distilled, field) == getattr(quick, field), field
