"""Top-K ensembles and the study report, on a real (tiny) study; the report is looked at in a real browser."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import fer_opt, tiny_study
from fer_optuna.training import checkpoints, data
from fer_optuna.search import worker
from fer_optuna.training.portable import Classifier
from fer_optuna.search import storage as fer_storage
from fer_optuna.search import study as fer_study
from test_dashboard import _browser, _chromium, assert_painted

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory, sample_csv):
    """A study of four trials, run once for the module's tests (which only read it)."""
    tmp_path = tmp_path_factory.mktemp("study")
    spec_file = tiny_study(tmp_path / "four.yaml", n_trials=4, pruner={"type": "none"}, train={"epochs": 2})
    url = f"sqlite:///{tmp_path}/s.db"
    fer_study.create(spec_file, url, data=str(sample_csv))
    study, spec = fer_study.load_study("tiny", fer_storage.open_storage(url))
    opts = worker.WorkerOptions(study="tiny", storage=url, device="cpu", checkpoint_dir=str(tmp_path / "ckpt"))
    objective = worker.Objective(study, spec, data.load(sample_csv), torch.device("cpu"), opts, log=lambda m: None)
    study.optimize(objective, n_trials=4)
    return url, study


def test_ensemble_of_the_top_trials_evaluates_and_predicts_like_a_model(finished_study, tmp_path, sample_csv):
    url, study = finished_study
    ens = tmp_path / "ens.pt"
    out = fer_opt("ensemble", "--storage", url, "--top", "3", "-o", ens, "--data", sample_csv).stdout
    assert "ensemble val accuracy" in out
    ckpt = checkpoints.read_checkpoint(ens)
    assert ckpt["kind"] == "ensemble" and len(ckpt["members"]) == 3
    best3 = sorted((t for t in study.trials), key=lambda t: t.value, reverse=True)[:3]
    assert ckpt["meta"]["trials"] == [t.number for t in best3]
    none = fer_opt("ensemble", "--storage", url, "--top", "0", "-o", tmp_path / "none.pt", check=False)
    assert none.returncode == 2 and not (tmp_path / "none.pt").exists()
    assert none.stderr.strip() == "error: top is 0: an ensemble needs one trial or more (command line: --top)"
    report = json.loads(fer_opt("evaluate", "--model", ens, "--data", sample_csv, "--json", "--tta").stdout)
    assert report["n"] == 150 and report["tta"] is True
    face = tmp_path / "face.png"
    Image.fromarray(np.zeros((30, 30), np.uint8)).save(face)
    [pred] = json.loads(fer_opt("predict", "--model", ens, face, "--json", "--no-detect", env={"FER_OPT_PRECISION": "fp32"})
                      .stdout)["faces"]
    # The known answer: the mean of what its three members say of the face (a 30x30 black square, scaled to 48).
    members = [Classifier(t.user_attrs["checkpoint"], "cpu", "fp32") for t in best3]
    vote = np.mean([m.probs(np.zeros((1, 48, 48), np.uint8))[0] for m in members], axis=0)
    assert [pred["probabilities"][c] for c in data.CLASSES] == pytest.approx(vote, abs=1e-3)


def test_soft_vote_averages_member_probabilities():
    members = [torch.nn.Linear(2, 7), torch.nn.Linear(2, 7)]
    x = torch.randn(5, 2)
    vote = checkpoints.SoftVote(members)(x).exp()
    expected = (members[0](x).softmax(-1) + members[1](x).softmax(-1)) / 2
    assert torch.allclose(vote, expected, atol=1e-6)


def test_report_is_one_page_a_browser_renders(finished_study, tmp_path, sample_csv):
    chromium = _chromium()
    url, study = finished_study
    page = tmp_path / "report.html"
    fer_opt("report", "--storage", url, "-o", page, "--data", sample_csv, "--top", "3")
    text = page.read_text()
    for heading in ("Optimisation history", "Intermediate values", "Parameter importances", "Parallel coordinates",
                    "Best trial", "with TTA", "Ensemble of the top 3", "data:image/png;base64",
                    "What the search bought", "original config  trial   0"):
        assert heading in text, heading
    assert "<script src=" not in text, "the page must be self-contained"
    shot = tmp_path / "report.png"
    _browser(chromium, tmp_path, f"--screenshot={shot}", f"file://{page}")
    assert_painted(shot)
    if os.environ.get("FER_OPT_KEEP_SCREENSHOT"):
        shutil.copy(shot, os.environ["FER_OPT_KEEP_SCREENSHOT"].replace(".png", "-report.png"))
