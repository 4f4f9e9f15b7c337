"""Classes are data: FER+ votes, image folders with their own classes, and models sized from them."""

from pathlib import Path

import numpy as np
import torch

from fer_optuna.recognition.recognizer import Recognizer
from fer_optuna.training import checkpoints, data, metrics
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
