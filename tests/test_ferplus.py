"""The bundled FER+ model (fer_optuna/weights/ferplus-best.pt), by name, on real FER+ PublicTest faces."""

import json

import numpy as np
import pytest

from conftest import FULL_NPZ, ROOT, SHARED, fer_opt, write_csv
from fer_optuna.errors import FerOptError
from fer_optuna.recognition.recognizer import Recognizer
from fer_optuna.training import checkpoints, data
from fer_optuna.training.config import load_config

FERPLUS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")
HEADER = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"


@pytest.fixture(scope="module")
def public_faces() -> tuple[np.ndarray, np.ndarray]:
    """The first 40 PublicTest faces that have a FER+ majority label, and those labels."""
    loaded = data.for_target(data.load(FULL_NPZ, labels=SHARED / "fer2013new.csv"), "majority")
    assert loaded.classes == FERPLUS
    images, labels = loaded.split("val")
    return images[:40], labels[:40]


def test_the_ferplus_model_by_name_says_ferplus_classes_and_agrees_with_the_majority(public_faces):
    images, labels = public_faces
    recognizer = Recognizer(model="ferplus", detector="haar")  # a 48x48 crop is never searched; haar loads in 0.3 s, mtcnn 4
    assert recognizer.classes == FERPLUS and recognizer.model_path == checkpoints.BUNDLED["ferplus"]
    probs = recognizer.classify(images)
    assert probs.shape == (40, 8) and np.allclose(probs.sum(1), 1, atol=1e-4)
    agree = (probs.argmax(1) == labels).mean()
    assert agree >= 0.75, f"agrees with FER+'s majority on {agree:.0%} of 40 PublicTest faces"
    [face] = recognizer.faces(images[0])
    assert list(face.probabilities) == list(FERPLUS) and face.emotion == FERPLUS[probs[0].argmax()]
    ckpt = checkpoints.read_checkpoint(checkpoints.BUNDLED["ferplus"])
    origin = ckpt["meta"]["provenance"]
    assert origin["study"] == "ferplus-finetune" and "fer-opt run --study-file ferplus-finetune" in origin["command"]
    assert ckpt["config"]["init"] == "fer2013" and origin["params"] == {k: ckpt["config"][k] for k in origin["params"]}
    # Its recipe is the file beside the others, and made it.
    assert (ROOT / origin["recipe"]).read_text() == ckpt["meta"]["recipe_text"]
    assert load_config(ROOT / origin["recipe"]).to_dict() == {**ckpt["config"], "provenance": {}}


def test_evaluate_takes_a_bundled_name_on_the_val_and_test_splits(public_faces, tmp_path):
    images, labels = public_faces
    # Real faces, each with 10 votes for its FER+ majority label, as PublicTest and again as PrivateTest
    # (the shared data holds no PrivateTest of its own).
    pixels, lines = [], []
    for usage in ("PublicTest", "PrivateTest"):
        for i, (img, y) in enumerate(zip(images[:12], labels[:12])):
            pixels.append(f"0,{' '.join(map(str, img.ravel()))},{usage}")
            lines.append(",".join([usage, f"fer{i:07d}.png", *("10" if k == y else "0" for k in range(10))]))
    csv = write_csv(tmp_path / "fer2013.csv", pixels)
    (tmp_path / "fer2013new.csv").write_text("\n".join([HEADER, *lines]) + "\n")
    for split in ("val", "test"):
        rep = json.loads(fer_opt("evaluate", "--model", "ferplus", "--data", csv, "--labels",
                                 tmp_path / "fer2013new.csv", "--split", split, "--json").stdout)
        assert rep["n"] == 12 and rep["accuracy"] >= 0.75 and list(rep["per_class"]) == list(FERPLUS)


def test_an_unknown_bundled_name_is_one_line_and_exit_2(tmp_path):
    said = fer_opt("evaluate", "--model", "ferplsu", "--data", tmp_path / "x.csv", check=False)
    assert said.returncode == 2 and "Traceback" not in said.stderr
    assert said.stderr.strip().splitlines() == [
        "error: model 'ferplsu': no such model file; give a bundled model's name (fer2013, ferplus) or the path of "
        "a checkpoint (command line: --model)"]
    with pytest.raises(FerOptError, match="model 'ferplsu': no such model file; give a bundled model's name"):
        Recognizer(model="ferplsu")


def test_the_finetune_study_starts_from_the_bundled_model_with_its_pixel_pipeline():
    from fer_optuna.search import shipped, study

    spec = study.load_spec(shipped.find("ferplus-finetune"))
    teacher = checkpoints.read_checkpoint(checkpoints.BUNDLED_MODEL)["config"]
    assert spec.train.init == "fer2013"
    for name in ("model", "width", "hidden_dim", "equalize", "smooth", "crop"):  # else the weights see other pixels
        assert getattr(spec.train, name) == teacher[name], name
    assert {"lr", "epochs", "target", "label_smoothing", "freeze"} <= {p.name for p in spec.space}
    # It chooses at full fidelity: its top rung is all the data and its best trial the model (no final: refit);
    # the baseline, a plain full fine-tune, is promoted to every rung; the space reaches a full fine-tune too.
    assert dict(spec.rungs[-1]) == {"train_subset": 0, "val_subset": 0} and not spec.final
    assert spec.enqueue[0]["freeze"] == 0 and spec.enqueue[0]["epochs"] == 3
    space = {p.name: p for p in spec.space}
    assert 0 in space["freeze"].choices and 3 in space["epochs"].choices
