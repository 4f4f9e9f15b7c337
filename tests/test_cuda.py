"""CUDA-only checks, run by benchmarks/gpu_check.sh on a GPU machine; skipped elsewhere."""

import warnings

import numpy as np
import pytest
import torch

from fer_optuna.training import checkpoints, data, inference, trainer
from fer_optuna.training.models import build_model
from fer_optuna.training.config import TrainConfig

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _data(n=512):
    rng = np.random.default_rng(0)
    labels = np.arange(n) % 7
    images = (rng.integers(0, 60, (n, 48, 48)) + labels[:, None, None] * 25).astype(np.uint8)
    return data.FerData({"train": images, "val": images[:128]}, {"train": labels, "val": labels[:128]}, "synthetic")


def record_layer_dtypes(monkeypatch) -> set[tuple[bool, torch.dtype]]:
    """(training?, output dtype) of every convolution and linear layer the trainer's models run from now on."""
    seen, real = set(), trainer.build_model

    def recorded(*args, **kwargs):
        model = real(*args, **kwargs)
        for layer in model.modules():
            if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
                layer.register_forward_hook(lambda m, inputs, out: seen.add((m.training, out.dtype)))
        return model

    monkeypatch.setattr(trainer, "build_model", recorded)
    return seen


@pytest.mark.parametrize("model", ["cnn3", "resnet18"])
def test_trains_on_cuda_in_bf16_and_the_checkpoint_runs_on_cpu(tmp_path, model, monkeypatch):
    # Raw pixels: the synthetic classes differ in brightness, which histogram equalisation erases.
    cfg = TrainConfig(model=model, epochs=3, batch_size=64, width=0.25, crop=44, erasing=0.2, mixup=0.2, ema=0.9,
                      equalize=False)
    seen = record_layer_dtypes(monkeypatch)
    result = trainer.train(cfg, _data(), device=torch.device("cuda"), checkpoint=tmp_path / "m.pt", log=None)
    assert result.best_val_acc > 0.3
    # bf16 autocast in the training steps; val scored in fp32, as the study selects on it.
    assert {dtype for training, dtype in seen if training} == {torch.bfloat16}, seen
    assert {dtype for training, dtype in seen if not training} == {torch.float32}, seen
    model_cpu, _ = checkpoints.model_from_checkpoint(checkpoints.read_checkpoint(tmp_path / "m.pt"), torch.device("cpu"))
    split = inference.to_device(*_data().split("val"), torch.device("cpu"))
    _, acc, _ = inference.evaluate(model_cpu, split, bf16=False)
    assert abs(acc - result.best_val_acc) < 0.05


def test_training_step_makes_no_host_syncs():
    cfg = TrainConfig(model="cnn3", batch_size=64)
    split = inference.to_device(*_data().split("train"), torch.device("cuda"))
    model = build_model("cnn3", 0.3, 128).cuda().to(memory_format=torch.channels_last)
    run = trainer.Run(model, trainer.make_optimizer(cfg, model, torch.device("cuda")), None, False, None,
                      torch.Generator("cuda").manual_seed(0), np.random.default_rng(0), torch.nn.CrossEntropyLoss(), True)
    args = (run, split, cfg)
    trainer.train_epoch(*args)
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.train_epoch(*args)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) <= 2, "only the two epoch-end .item() calls may wait for the GPU"
