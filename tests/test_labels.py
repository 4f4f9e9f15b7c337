"""Classes are data: FER+ votes, image folders with their own classes, and models sized from them."""

import json
import re
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from PIL import Image

from conftest import SHARED, fer_opt, synthetic_rows, write_csv
from fer_optuna.errors import FerOptError
from fer_optuna.recognition.recognizer import Recognizer
from fer_optuna.training import checkpoints, data, metrics, trainer
from fer_optuna.training.config import TrainConfig
from fer_optuna.training.models import build_model


def test_the_bundled_model_loads_as_before_and_says_fer2013s_seven_names():
    ckpt = checkpoints.read_checkpoint(checkpoints.BUNDLED_MODEL)
    assert checkpoints.checkpoint_classes(ckpt) == data.CLASSES
    # A file written before classes were stored is FER2013's seven.
    old = {k: v for k, v in ckpt.items() if k != "classes"}
    assert checkpoints.checkpoint_classes(old) == data.CLASSES
    model, _ = checkpoints.model_from_checkpoint(old, torch.device("cpu"))
    assert model(torch.zeros(2, 1, 48, 48)).shape == (2, 7)
    found = Recognizer().faces(np.full((48, 48), 128, np.uint8))
    assert list(found[0].probabilities) == list(data.CLASSES)


def test_a_checkpoint_carries_its_classes_and_sizes_its_head(tmp_path):
    classes = ("cat", "dog", "owl")
    cfg = TrainConfig(model="mlp", hidden_dim=8)
    path = tmp_path / "m.pt"
    checkpoints.save_checkpoint(path, build_model("mlp", 0.0, 8, 1.0, len(classes)), cfg, classes)
    ckpt = checkpoints.read_checkpoint(path)
    model, _ = checkpoints.model_from_checkpoint(ckpt, torch.device("cpu"))
    assert checkpoints.checkpoint_classes(ckpt) == classes and model(torch.zeros(1, 1, 48, 48)).shape == (1, 3)
    assert list(Recognizer(path).faces(np.zeros((48, 48), np.uint8))[0].probabilities) == list(classes)
    rep = metrics.report(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2]), classes)
    assert list(rep["per_class"]) == list(classes) and "owl" in metrics.format_report(rep)


# Real FER+ rows (fer2013new.csv lines 2-5, 19, 152, 199, 6797 and 28711-28713), one synthetic Training row
# and synthetic PrivateTest rows (the shared file has none), with what the reference rules make of each.
VOTES = """Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF
Training,fer0000000.png,4,0,0,1,3,2,0,0,0,0
Training,fer0000001.png,6,0,1,1,0,0,0,0,2,0
Training,fer0000002.png,5,0,0,3,1,0,0,0,1,0
Training,fer0000003.png,4,0,0,4,1,0,0,0,1,0
Training,,0,0,0,0,0,0,0,0,0,10
Training,fer0000149.png,0,1,2,3,2,0,2,0,0,0
Training,fer0000196.png,3,0,2,1,1,0,0,0,3,0
Training,fer0006767.png,3,1,0,0,0,0,0,0,6,0
Training,fer9999999.png,0,0,0,0,0,0,0,8,2,0
PublicTest,fer0028638.png,4,0,0,0,1,0,0,4,1,0
PublicTest,fer0028639.png,1,0,0,1,0,2,0,6,0,0
PublicTest,fer0028640.png,7,0,0,0,2,0,0,1,0,0
PrivateTest,fer0032000.png,0,10,0,0,0,0,0,0,0,0
PrivateTest,fer0032001.png,0,0,0,0,0,0,0,0,0,10
PrivateTest,fer0032002.png,0,0,5,0,5,0,0,0,0,0
PrivateTest,,0,10,0,0,0,0,0,0,0,0
"""
FERPLUS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")


def _fer_plus(tmp_path: Path, votes: str = VOTES) -> tuple[Path, Path]:
    pixels = write_csv(tmp_path / "fer2013.csv", synthetic_rows({"Training": 9, "PublicTest": 3, "PrivateTest": 4}))
    (tmp_path / "fer2013new.csv").write_text(votes)
    return pixels, tmp_path / "fer2013new.csv"


def test_majority_labels_by_the_reference_rules(tmp_path):
    pixels, votes = _fer_plus(tmp_path)
    d = data.load(pixels, labels=votes)
    raw = data.load(pixels)
    assert d.classes == FERPLUS
    # By hand: a single vote is dropped (row 2: 5 of the 8 votes left is a majority; 5 of 10 would not be);
    # ties (row 3; PublicTest row 0; PrivateTest row 2), unknown or not-a-face ahead or tied (rows 6, 7;
    # PrivateTest row 1) and unnamed rows (row 4, PrivateTest row 3) have no majority label.
    majority = data.for_target(d, "majority")
    assert majority.labels["train"].tolist() == [0, 0, 7] and majority.soft is None
    assert (majority.images["train"] == raw.images["train"][[1, 2, 8]]).all()
    assert d.labels["val"].tolist() == [7, 0] and (d.images["val"] == raw.images["val"][[1, 2]]).all()
    assert d.labels["test"].tolist() == [1] and (d.images["test"] == raw.images["test"][[0]]).all()


def test_distribution_targets_by_the_reference_rules(tmp_path):
    pixels, votes = _fer_plus(tmp_path)
    d = data.for_target(data.load(pixels, labels=votes), "distribution")
    expected = np.zeros((5, 8))
    expected[0, [0, 4]] = 4 / 7, 3 / 7  # 4 neutral, 3 anger (the single sadness vote dropped) hold 7/9 >= 3/4
    expected[1, 0] = 1  # 6 of 8 is already 3/4: the 2 unknown votes never count
    expected[2, [0, 3]] = 5 / 8, 3 / 8
    expected[3, [0, 3]] = 1 / 2, 1 / 2  # a tie is taken together
    expected[4, 7] = 1
    # Row 5: four emotions once the tie is taken (over 3); row 6: unknown tied with neutral is dropped, leaving
    # 3 of 8 votes (half or less); row 7: unknown leads. Val and test keep majority labels.
    assert np.allclose(d.soft, expected) and d.labels["train"].tolist() == [0, 0, 0, 0, 7]
    assert d.labels["val"].tolist() == [7, 0]
    with pytest.raises(FerOptError, match="distribution target needs vote counts"):
        data.for_target(data.load(pixels), "distribution")


def test_the_shared_votes_give_the_reference_counts(tmp_path):
    d = data.load(SHARED / "fer2013.npz.xz", labels=SHARED / "fer2013new.csv")
    assert len(data.for_target(d, "majority").labels["train"]) == 25060 and len(d.labels["val"]) == 3199
    # The full votes file goes on with PrivateTest, which these pixels lack: their rows still line up.
    full = tmp_path / "fer2013new.csv"
    full.write_text((SHARED / "fer2013new.csv").read_text().rstrip("\n") + "\n" + VOTES.split("\n", 13)[13])
    again = data.load(SHARED / "fer2013.npz.xz", labels=full)
    assert all((again.labels[s] == d.labels[s]).all() for s in ("train", "val")) and "test" not in again.labels


@pytest.mark.parametrize("target", ["majority", "distribution"])
def test_soft_targets_train_with_smoothing_mixup_cutmix_and_class_weights(tmp_path, target, monkeypatch):
    pixels, votes = _fer_plus(tmp_path)
    cfg = TrainConfig(model="mlp", hidden_dim=8, epochs=3, batch_size=2, target=target, label_smoothing=0.1,
                      mixup=0.4, cutmix=1.0, class_weights="balanced", seed=1)
    seen, forward = [], torch.nn.CrossEntropyLoss.forward
    monkeypatch.setattr(torch.nn.CrossEntropyLoss, "forward", lambda self, x, t: (seen.append(t), forward(self, x, t))[1])
    out = tmp_path / "m.pt"
    loaded = data.load(pixels, labels=votes)
    result = trainer.train(cfg, loaded, device=torch.device("cpu"), checkpoint=out, log=None)
    assert np.isfinite(result.history[-1].train_loss)
    assert checkpoints.checkpoint_classes(checkpoints.read_checkpoint(out)) == FERPLUS
    if target == "distribution":  # the loss saw the vote distributions, whole rows of them
        rows = {tuple(r) for r in data.for_target(loaded, target).soft.tolist()}
        assert all(t.dtype == torch.float32 and {tuple(r) for r in t.tolist()} <= rows for t in seen)
        assert len({tuple(r) for t in seen for r in t.tolist()}) > 1
    else:
        assert all(t.dtype == torch.int64 for t in seen)


BAD_VOTES = {
    "malformed": (VOTES.replace("fer0000002.png,5,0,0,3,1,0,0,0,1,0", "fer0000002.png,5,0,0,3,1,0,0,0,1"),
                  "line 4: 11 fields, expected 12"),
    "not counts": (VOTES.replace("fer0000003.png,4,", "fer0000003.png,2.5,"), "line 5: vote '2.5'"),
    "negative": (VOTES.replace("fer0000003.png,4,", "fer0000003.png,-1,"), "line 5: vote '-1'"),
    "header": (VOTES.replace("Usage,Image name", "Usage,Image"), "line 1: header is"),
}


@pytest.mark.parametrize("case", sorted(BAD_VOTES))
def test_bad_votes_are_one_line_naming_the_file_and_line(tmp_path, case):
    text, message = BAD_VOTES[case]
    pixels, votes = _fer_plus(tmp_path, text)
    with pytest.raises(FerOptError) as e:
        data.load(pixels, labels=votes)
    assert str(e.value).startswith(f"{votes}, ") and message in str(e.value), str(e.value)


# Rows that do not line up with the votes (VOTES: 9 Training, 3 PublicTest, 4 PrivateTest rows): the first row
# whose Usage differs from the votes' row for it.
SPLITS = {"Training": 9, "PublicTest": 3, "PrivateTest": 4}
OUT_OF_ORDER = {
    "PublicTest first": ({"PublicTest": 3, "Training": 9, "PrivateTest": 4}, VOTES,
                         "row 1 is PublicTest, but the votes for it ({votes}, line 2, its row 1 of Training, PublicTest, "
                         "PrivateTest) are for a Training row"),
    "sorted by Usage": ({"PrivateTest": 4, "PublicTest": 3, "Training": 9}, VOTES, "row 1 is PrivateTest"),
    "votes one row short": (SPLITS, VOTES.rsplit("\n", 2)[0] + "\n",
                            "row 16 is PrivateTest, but {votes} has only 15 rows of Training, PublicTest, PrivateTest"),
    "votes' Usage off": (SPLITS, VOTES.replace("Training,fer9999999", "PublicTest,fer9999999"),
                         "row 9 is Training, but the votes for it ({votes}, line 10,"),
    "votes one row long": ({"Training": 9, "PublicTest": 2}, VOTES,
                           "has 11 rows, but {votes} goes on with Training, PublicTest rows (line 13)"),
}


@pytest.mark.parametrize("kind", ["csv", "npz"])
@pytest.mark.parametrize("case", sorted(OUT_OF_ORDER))
def test_rows_in_another_order_than_the_votes_are_refused_naming_the_first(tmp_path, case, kind):
    splits, text, message = OUT_OF_ORDER[case]
    pixels = write_csv(tmp_path / "fer2013.csv", synthetic_rows(splits))
    if kind == "npz":  # the .npz edition keeps the rows' order as well
        parsed = [row.split(",") for row in synthetic_rows(splits)]
        np.savez(tmp_path / "fer2013.npz", images=np.array([p.split() for _, p, _ in parsed], np.uint8).reshape(-1, 48, 48),
                 labels=np.array([int(e) for e, _, _ in parsed]), usage=np.array([u for _, _, u in parsed]))
        pixels = tmp_path / "fer2013.npz"
    votes = tmp_path / "fer2013new.csv"
    votes.write_text(text)
    for _ in ("parsed", "cached"):  # the cached parse keeps the order too
        with pytest.raises(FerOptError) as e:
            data.load(pixels, labels=votes)
        assert str(e.value).startswith(f"{pixels}: ") and message.format(votes=votes) in str(e.value), str(e.value)
        assert str(e.value).endswith("give the data in the original row order of fer2013.csv, as Kaggle ships it")
    assert data.load(pixels).cache_file


def test_votes_line_up_with_a_source_that_lacks_splits(tmp_path):
    """A source with only some of the votes' splits, in their order, takes the votes for its rows; without val,
    val is carved from train after the votes, among faces with a majority label."""
    votes = tmp_path / "fer2013new.csv"
    votes.write_text(VOTES)
    no_test = write_csv(tmp_path / "no-test.csv", synthetic_rows({"Training": 9, "PublicTest": 3}))
    assert data.load(no_test, labels=votes).labels["val"].tolist() == [7, 0]
    train_only = write_csv(tmp_path / "train.csv", synthetic_rows({"Training": 9}))
    d = data.load(train_only, labels=votes)
    raw = data.load(no_test)  # the same Training rows
    assert len(d.labels["val"]) == 1 and "carved" in d.notes[-1] and "test" not in d.labels
    # Val holds one of the three faces with a majority label (rows 1, 2, 8), with that label; train the rest.
    [row] = [i for i in (1, 2, 8) if (raw.images["train"][i] == d.images["val"][0]).all()]
    assert d.labels["val"].tolist() == [{1: 0, 2: 0, 8: 7}[row]]
    assert len(d.labels["train"]) == 4 and int(d.votes["majority"].sum()) == 2
    assert len(data.for_target(d, "distribution").soft) == 4


def test_an_image_folder_takes_no_votes(tmp_path):
    root = _tree(tmp_path / "tree", {"train": ("happy", "sad"), "test": ("happy", "sad")}, n=1)
    (tmp_path / "fer2013new.csv").write_text(VOTES)
    proc = fer_opt("train", "--data", root, "--labels", tmp_path / "fer2013new.csv", "--out", tmp_path / "m.pt", check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "m.pt").exists()
    assert "an image folder has no row order for FER+ votes to follow; give the votes with the Kaggle fer2013.csv " \
           "(or a prepared .npz) as the data (command line: --labels)" in proc.stderr


def test_bad_votes_on_the_cli_exit_2_and_write_nothing(tmp_path):
    pixels, votes = _fer_plus(tmp_path, BAD_VOTES["not counts"][0])
    proc = fer_opt("train", "--data", pixels, "--labels", votes, "--out", tmp_path / "m.pt", "--set", "model=mlp",
                   "--epochs", "1", check=False)
    assert proc.returncode == 2 and "line 5: vote '2.5'" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "m.pt").exists() and not (tmp_path / "m.state.pt").exists()


def _tree(root: Path, classes: dict[str, tuple[str, ...]], n: int = 4) -> Path:
    rng = np.random.default_rng(0)
    for split, names in classes.items():
        for c in names:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return root


def test_a_folder_of_three_made_up_classes_trains_evaluates_and_predicts_with_its_names(tmp_path):
    names = ("zebra", "Apple", "mango")  # sorted without regard to case: Apple, mango, zebra
    root = _tree(tmp_path / "tree", {"train": names, "val": names, "test": names})
    assert data.load(root).classes == ("Apple", "mango", "zebra")
    model = tmp_path / "m.pt"
    fer_opt("train", "--data", root, "--out", model, "--model", "mlp", "--epochs", "1", "--batch-size", "4",
            "--set", "hidden_dim=8")
    rep = json.loads(fer_opt("evaluate", "--model", model, "--data", root, "--split", "test", "--json").stdout)
    assert list(rep["per_class"]) == ["Apple", "mango", "zebra"] and rep["n"] == 12
    face = root / "test" / "mango" / "0.png"
    [row] = [json.loads(line) for line in fer_opt("predict", face, "--model", model, "--no-detect", "--json").stdout.splitlines()]
    assert set(row["faces"][0]["probabilities"]) == {"Apple", "mango", "zebra"}
    # The bundled FER2013 model cannot score these classes: one line that says so.
    proc = fer_opt("evaluate", "--data", root, "--split", "test", check=False)
    assert proc.returncode == 2 and "the model's classes (Angry" in proc.stderr and "(Apple, mango, zebra)" in proc.stderr


def test_a_folder_whose_splits_differ_or_with_one_class_is_one_line(tmp_path):
    root = _tree(tmp_path / "tree", {"train": ("a", "b", "c"), "test": ("a", "b", "d")}, n=1)
    proc = fer_opt("train", "--data", root, "--out", tmp_path / "m.pt", check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "m.pt").exists()
    assert "the splits have different classes (only train/ has c; only test/ has d)" in proc.stderr
    with pytest.raises(FerOptError, match="1 class folder"):
        data.load(_tree(tmp_path / "one", {"train": ("a",), "test": ("a",)}, n=1))
    # FER2013's names, in any case and any subset, are FER2013's seven classes in their order.
    assert data.load(_tree(tmp_path / "fer", {"train": ("happy", "SAD"), "test": ("happy",)}, n=2)).classes == data.CLASSES


def test_the_onnx_file_carries_the_classes(tmp_path):
    from fer_optuna.training import portable

    classes = ("cat", "dog", "owl")
    path = tmp_path / "m.pt"
    checkpoints.save_checkpoint(path, build_model("mlp", 0.0, 8, 1.0, len(classes)), TrainConfig(model="mlp", hidden_dim=8),
                                classes)
    portable.export_onnx(checkpoints.read_checkpoint(path), tmp_path / "m.onnx")
    onnx_model = portable.Classifier(tmp_path / "m.onnx")
    assert onnx_model.classes == classes and onnx_model.probs(np.zeros((2, 48, 48), np.uint8)).shape == (2, 3)


def test_a_study_stores_the_votes_beside_the_data_and_its_workers_load_both(tmp_path):
    from conftest import TINY
    from fer_optuna.search import study as fer_study

    pixels, votes = _fer_plus(tmp_path)
    url = f"sqlite:///{tmp_path / 's.db'}"
    created, _ = fer_study.create(TINY, url, data=str(pixels), labels=str(votes))
    assert created.user_attrs[fer_study.ATTR_LABELS] == str(votes.resolve())
    assert fer_study.load_data(created).classes == FERPLUS
    plain, _ = fer_study.create(TINY, url, name="plain", data=str(pixels))  # a study without votes, as before
    assert fer_study.load_data(plain).classes == data.CLASSES


def test_init_takes_the_bundled_model_by_name_and_carries_the_shared_classes_rows(tmp_path):
    pixels, votes = _fer_plus(tmp_path)
    bundled = checkpoints.read_checkpoint(checkpoints.BUNDLED_MODEL)
    cfg = TrainConfig(**{**bundled["config"], "provenance": {}}).replace(
        init="fer2013", epochs=1, batch_size=2, lr=1e-12, train_subset=0, val_subset=0, degrade=0.0, ema=0.0)
    out = tmp_path / "ferplus.pt"
    trainer.train(cfg, data.load(pixels, labels=votes), device=torch.device("cpu"), checkpoint=out, log=None)
    tuned = checkpoints.read_checkpoint(out)
    assert checkpoints.checkpoint_classes(tuned) == FERPLUS
    head = [k for k, v in tuned["state_dict"].items() if v.shape[:1] == (8,) and k.endswith("weight")][-1]
    old, new = bundled["state_dict"][head].float(), tuned["state_dict"][head]
    # FER+'s neutral, happiness, surprise, sadness, anger, disgust, fear are FER2013's
    # Neutral, Happy, Surprise, Sad, Angry, Disgust, Fear; contempt is new.
    for row, was in enumerate((6, 3, 5, 4, 0, 1, 2)):
        assert torch.allclose(new[row], old[was], atol=1e-3), FERPLUS[row]
    assert not any(torch.allclose(new[7], old[k], atol=1e-2) for k in range(7))


def test_train_and_evaluate_take_the_votes_on_the_cli(tmp_path):
    pixels, votes = _fer_plus(tmp_path)
    model = tmp_path / "m.pt"
    said = fer_opt("train", "--data", pixels, "--labels", votes, "--out", model, "--model", "mlp", "--epochs", "1",
                   "--batch-size", "2", "--set", "hidden_dim=8", "--set", "target=distribution").stdout
    assert "faces with a label: train 3 (with the distribution target 5), val 2, test 1" in said
    rep = json.loads(fer_opt("evaluate", "--model", model, "--data", pixels, "--labels", votes, "--split", "test",
                             "--json").stdout)
    assert rep["n"] == 1 and list(rep["per_class"]) == list(FERPLUS)


def test_the_votes_are_part_of_a_study_a_copy_is_the_same_votes_and_other_votes_are_one_line(tmp_path):
    from conftest import TINY
    from fer_optuna.search import study as fer_study

    pixels, votes = _fer_plus(tmp_path)
    url = f"sqlite:///{tmp_path / 's.db'}"
    created, _ = fer_study.create(TINY, url, data=str(pixels), labels=str(votes))
    again, new = fer_study.create(TINY, url, data=str(pixels), skip_if_exists=True)  # no labels: the study's
    assert not new and fer_study.study_labels(again) == str(votes.resolve())
    copy = tmp_path / "elsewhere" / "votes.csv"  # this machine's copy, at another path
    copy.parent.mkdir()
    copy.write_bytes(votes.read_bytes())
    fer_study.create(TINY, url, data=str(pixels), labels=str(copy), skip_if_exists=True)
    assert fer_study.load_data(created, labels=str(copy)).classes == FERPLUS
    other = tmp_path / "other.csv"  # each face's top emotion kept: other votes all the same
    other.write_text(VOTES.replace("fer0000002.png,5,", "fer0000002.png,6,"))
    with pytest.raises(FerOptError, match=re.escape(f"labelled by the FER+ votes in {votes.resolve()}, not by labels={other}")):
        fer_study.create(TINY, url, data=str(pixels), labels=str(other), skip_if_exists=True)
    with pytest.raises(FerOptError, match="not by labels="):
        fer_study.load_data(created, labels=str(other))  # a worker's --labels
    plain, _ = fer_study.create(TINY, url, name="plain", data=str(pixels))
    with pytest.raises(FerOptError, match=re.escape(f"'plain' is labelled by its data, not by labels={votes}")):
        fer_study.create(TINY, url, name="plain", data=str(pixels), labels=str(votes), skip_if_exists=True)
    # On the command line: one line naming both, exit 2, and the study as it was.
    proc = fer_opt("create-study", "--config", TINY, "--storage", url, "--data", pixels, "--labels", other,
                   "--skip-if-exists", check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert str(votes.resolve()) in proc.stderr and str(other) in proc.stderr and "(command line: --labels)" in proc.stderr
    assert fer_study.study_labels(fer_study.load_study("tiny", created._storage)[0]) == str(votes.resolve())


def test_a_rerun_without_labels_searches_and_fits_the_final_model_on_the_studys_votes(tmp_path):
    from conftest import tiny_study
    from fer_optuna import pipeline
    from fer_optuna.search import study as fer_study

    pixels, votes = _fer_plus(tmp_path)
    url = f"sqlite:///{tmp_path / 's.db'}"
    spec = tiny_study(tmp_path / "t.yaml", n_trials=1, train={"model": "mlp", "epochs": 1}, enqueue=[])
    fer_study.create(spec, url, data=str(pixels), labels=str(votes))  # create-study --labels, then run without
    said = []
    model = pipeline.run(str(pixels), storage=url, spec_path=str(spec), out_dir=tmp_path / "runs", gpu="cpu", port=0,
                         checkpoint_dir=str(tmp_path / "ckpt"), log=said.append)
    assert checkpoints.checkpoint_classes(checkpoints.read_checkpoint(model)) == FERPLUS
    assert said[-1].endswith(f"--labels {votes.resolve()} --split val")


def test_a_distribution_run_does_not_resume_on_votes_that_keep_each_faces_top_emotion(tmp_path):
    pixels, votes = _fer_plus(tmp_path)
    cfg = TrainConfig(model="mlp", hidden_dim=8, epochs=2, batch_size=2, target="distribution")
    state, cpu = tmp_path / "s.pt", torch.device("cpu")
    trainer.train(cfg, data.load(pixels, labels=votes), device=cpu, state=state, on_epoch=lambda s: True, log=None)
    (tmp_path / "fer2013new.csv").write_text(VOTES.replace("fer0000002.png,5,", "fer0000002.png,6,"))
    changed = data.for_target(data.load(pixels, labels=votes), "distribution")
    assert changed.labels["train"].tolist() == [0, 0, 0, 0, 7], "the same hard labels: only the distribution moved"
    said = []
    again = trainer.train(cfg, data.load(pixels, labels=votes), device=cpu, state=state, log=said.append)
    assert again.resumed_at == 0 and f"{state}: saved by a run on other data; starting afresh" in said


def test_a_teacher_of_other_classes_than_the_studys_is_refused_when_the_study_is_created_and_when_run_starts(tmp_path):
    from conftest import tiny_study
    from test_distill import fake_teacher
    from fer_optuna import pipeline
    from fer_optuna.search import storage, study as fer_study

    pixels, votes = _fer_plus(tmp_path)
    url = f"sqlite:///{tmp_path / 's.db'}"
    teacher = fake_teacher(tmp_path / "t.pt")  # FER2013's seven classes
    spec = tiny_study(tmp_path / "t.yaml", final={"teacher": str(teacher)})
    with pytest.raises(FerOptError, match=r"t.yaml, final: teacher .*not the student's \(neutral, happiness"):
        fer_study.create(spec, url, data=str(pixels), labels=str(votes))
    assert optuna.get_all_study_names(storage.open_storage(url)) == [], "nothing written"
    fake_teacher(teacher, classes=FERPLUS)
    fer_study.create(spec, url, data=str(pixels), labels=str(votes))
    fake_teacher(teacher)  # the teacher file changed since
    with pytest.raises(FerOptError, match="final: teacher .* are not the student's"):
        pipeline.run(str(pixels), storage=url, spec_path=str(spec), out_dir=tmp_path / "runs", gpu="cpu", port=0)
    assert not (tmp_path / "runs").exists()
