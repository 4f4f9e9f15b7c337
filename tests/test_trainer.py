import json
import re

import numpy as np
import pytest
import torch
from torch import nn
from PIL import Image

from conftest import ROOT, fer_opt, fer_opt_interrupted
from fer_optuna.training import augment, checkpoints, data, trainer
from fer_optuna.training.config import TrainConfig, config_from_dict, dump_config, load_config
from fer_optuna.errors import FerOptError
from fer_optuna.training.models import MODELS, build_model, count_parameters


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_maps_a_batch_to_seven_logits(name):
    model = build_model(name, 0.3, 64, 0.25)
    assert model(torch.zeros(2, 1, 48, 48)).shape == (2, 7)


def test_mlp_is_the_original_experiment_1():
    assert count_parameters(build_model("mlp", 0.0, 64)) == 2304 * 64 + 64 + 64 * 7 + 7


def test_cpu_dropout_keeps_the_expectation():
    drop = build_model("cnn3", 0.3, 64)[4]
    drop.train()
    x = torch.ones(200_000)
    y = drop(x)
    assert abs(y.mean().item() - 1) < 0.01
    assert abs((y == 0).float().mean().item() - 0.3) < 0.01
    assert not torch.equal(drop(x) == 0, y == 0), "a new mask each call"
    odd = torch.ones(3, 5, 7)  # not a whole number of 8-byte words
    assert drop(odd).shape == odd.shape
    assert torch.equal(drop.eval()(odd), odd)


@pytest.mark.parametrize("name", ["cnn_small", "cnn3", "vgg"])
def test_pooling_before_relu_gives_the_original_order_values_and_gradients(name):
    torch.manual_seed(0)
    fast = build_model(name, 0.0, 32, 0.25).double()
    layers = list(fast)  # the same modules, ReLU moved back in front of each max-pool
    swapped = 0
    for i in range(len(layers) - 1):
        if isinstance(layers[i], nn.MaxPool2d) and isinstance(layers[i + 1], nn.ReLU):
            layers[i], layers[i + 1] = layers[i + 1], layers[i]
            swapped += 1
    assert swapped >= 2
    reference = nn.Sequential(*layers)
    x = torch.randn(4, 1, 48, 48, dtype=torch.double)
    grads = []
    for model in (fast, reference):
        model.zero_grad()
        out = model(x)
        out.square().sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        grads[-1].append(out.detach())
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-10)


def test_augment_is_batched_seeded_and_normalised():
    x = torch.randint(0, 256, (32, 1, 48, 48), dtype=torch.uint8)
    cfg = TrainConfig(rotation=10, shift=0.1, crop=44, erasing=0.5)
    a = augment.augment(x, cfg, torch.Generator().manual_seed(0))
    b = augment.augment(x, cfg, torch.Generator().manual_seed(0))
    assert a.shape == (32, 1, 48, 48) and a.dtype == torch.float32 and torch.equal(a, b)
    plain = augment.augment(x, TrainConfig(flip=False, rotation=0), torch.Generator())
    assert torch.allclose(plain, augment.normalize(x.float() / 255))
    assert augment.tta_views(x[:3], crop=44).shape == (10, 3, 1, 48, 48)
    mirrored = augment.tta_views(x[:3], crop=48)
    assert mirrored.shape == (2, 3, 1, 48, 48) and torch.equal(mirrored[1], mirrored[0].flip(-1))


def test_degraded_copies_saturate_and_compress_like_the_processed_edition(sample_csv):
    images, _ = data.load(sample_csv).split("train")
    copies = augment.degraded_copies(images, seed=0)
    assert copies.shape == images.shape and copies.dtype == np.uint8
    assert np.array_equal(copies, augment.degraded_copies(images, seed=0)), "seeded"
    # The processed edition: about 7% of pixels at 255 and std 78, against about 1% and 65 here.
    assert (images == 255).mean() < 0.02 and 0.04 < (copies == 255).mean() < 0.15
    assert 70 < copies.std() < 85 and images.std() < 70
    x, d = torch.from_numpy(images[:64, None]), torch.from_numpy(copies[:64, None])
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(augment.pick_degraded(x, d, 0.0, gen), x) and torch.equal(augment.pick_degraded(x, d, 1.0, gen), d)
    mixed = augment.pick_degraded(x, d, 0.5, gen)
    from_copy = (mixed == d).flatten(1).all(1) & ~(mixed == x).flatten(1).all(1)
    assert 10 < from_copy.sum() < 54, "about half the batch, each image whole from one or the other"


def test_flip_only_flips():
    x = torch.arange(48 * 48, dtype=torch.float32).view(1, 1, 48, 48).expand(64, 1, 48, 48).to(torch.uint8)
    out = augment.augment(x, TrainConfig(rotation=0), torch.Generator().manual_seed(1))
    plain = augment.augment(x, TrainConfig(flip=False, rotation=0), torch.Generator())
    same, mirrored = ((out == y).flatten(1).all(1) for y in (plain, plain.flip(-1)))
    assert (same | mirrored).all(), "every image comes out as it was or as its left-right mirror"
    assert 0 < same.sum() < 64


def _faces(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic classes that every pixel pipeline keeps apart: class c is a bright band at row 2 + 6c on noise.
    (Not a brightness per class: histogram equalisation erases that, and a model would learn nothing.)"""
    labels = np.arange(n) % 7
    images = rng.integers(0, 120, (n, 48, 48)).astype(np.uint8)
    for i, c in enumerate(labels):
        images[i, 2 + 6 * c: 10 + 6 * c, 14:34] += 120
    return images, labels


def _tiny_data(n=224, seed=0):
    rng = np.random.default_rng(seed)
    (train, train_labels), (val, val_labels) = _faces(n, rng), _faces(70, rng)
    return data.FerData({"train": train, "val": val}, {"train": train_labels, "val": val_labels}, "tiny")


def test_seeded_training_is_reproducible_on_cpu():
    cfg = TrainConfig(model="cnn_small", epochs=2, batch_size=16, seed=3)
    a = trainer.train(cfg, _tiny_data(), device=torch.device("cpu"), log=None)
    b = trainer.train(cfg, _tiny_data(), device=torch.device("cpu"), log=None)
    assert [h.train_loss for h in a.history] == [h.train_loss for h in b.history]


@pytest.mark.parametrize("options", [
    dict(optimizer="sgd", scheduler="onecycle", label_smoothing=0.1, class_weights="balanced"),
    dict(optimizer="adamw", scheduler="cosine", warmup_epochs=1, mixup=0.4, cutmix=1.0, ema=0.9, erasing=0.5, crop=42, shift=0.1),
    dict(degrade=0.5, equalize=False),
    dict(degrade=0.5, smooth=0.5),
])
def test_training_options_run_and_learn_something(options):
    cfg = TrainConfig(model="cnn_small", epochs=3, batch_size=16, lr=3e-3, **options)
    result = trainer.train(cfg, _tiny_data(), device=torch.device("cpu"), log=None)
    lrs = [h.lr for h in result.history]
    assert result.epochs_run == 3
    if cfg.scheduler in ("onecycle", "cosine"):  # both anneal to (next to) nothing by the last step
        assert lrs[-1] < 0.01 * cfg.lr < lrs[0]
    else:  # plateau: 3 epochs are within its patience, the rate stays
        assert lrs == [cfg.lr] * 3
    assert result.best_val_acc > 0.6, "chance is 1/7; each of these learns the bands in 3 epochs"


def test_ema_decay_warms_up_so_early_averages_follow_the_model():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = trainer.EMA(model, decay=0.999)
    weight0, mean0 = model[0].weight.detach().clone(), model[1].running_mean.clone()
    shift = average = 0.0  # how far the model and the average have moved from the start
    for step in range(1, 4):
        with torch.no_grad():
            model[0].weight.add_(1.0)
            model[1].running_mean.add_(1.0)
        ema.update(model)
        shift += 1
        decay = min(0.999, (1 + step) / (10 + step))
        average = decay * average + (1 - decay) * shift
    assert ema.steps == 3 and 1.5 < average < 3  # a fixed 0.999 would have moved 0.006
    assert torch.allclose(ema.module[0].weight, weight0 + average, atol=1e-5)
    assert torch.allclose(ema.module[1].running_mean, mean0 + average, atol=1e-5)
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_on_epoch_sees_every_field_and_can_stop():
    seen = []
    result = trainer.train(TrainConfig(model="mlp", epochs=5), _tiny_data(), device=torch.device("cpu"),
                           on_epoch=lambda s: seen.append(s) or s.epoch == 2, log=None)
    assert result.epochs_run == 2 and [s.epoch for s in seen] == [1, 2]
    assert seen[0].seconds > 0 and seen[0].lr == 1e-3
    # The share of the 70 val images right: a whole number of them, and the best of the epochs is the result's.
    assert all(s.val_acc * 70 == pytest.approx(round(s.val_acc * 70), abs=1e-4) for s in seen)
    assert result.best_val_acc == max(s.val_acc for s in seen)


def test_nan_loss_stops_with_a_reason(monkeypatch):
    real = torch.nn.CrossEntropyLoss.forward
    monkeypatch.setattr(torch.nn.CrossEntropyLoss, "forward", lambda self, a, b: real(self, a, b) * float("nan"))
    with pytest.raises(trainer.NonFiniteLoss, match="training loss became nan"):
        trainer.train(TrainConfig(model="mlp", epochs=2), _tiny_data(), device=torch.device("cpu"), log=None)


def test_config_yaml_round_trip_and_refusals(tmp_path):
    cfg = TrainConfig(lr=3e-4, batch_size=128)
    dump_config(cfg, tmp_path / "c.yaml", "# header")
    assert load_config(tmp_path / "c.yaml") == cfg
    with pytest.raises(FerOptError, match="unknown field.*learning_rate"):
        config_from_dict({"learning_rate": 1})
    with pytest.raises(FerOptError, match="'model' is 'vit'"):
        config_from_dict({"model": "vit"})
    with pytest.raises(FerOptError, match="'batch_size' is 'big'; expected a int"):
        config_from_dict({"batch_size": "big"})


def test_checkpoint_refuses_foreign_files(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"garbage")
    with pytest.raises(FerOptError, match="not a fer-optuna model file"):
        checkpoints.read_checkpoint(tmp_path / "x.pt")
    torch.save({"format": "other"}, tmp_path / "y.pt")
    with pytest.raises(FerOptError, match="not a fer-optuna model file"):
        checkpoints.read_checkpoint(tmp_path / "y.pt")


def test_train_evaluate_predict_cnn3_on_the_sample(sample_csv, tmp_path):
    """The issue's end-to-end test: 2 epochs of cnn3 on the 500-row sample, then evaluate and predict."""
    model = tmp_path / "model.pt"
    out = fer_opt("train", "--data", sample_csv, "--epochs", "2", "--out", model, "--set", "hidden_dim=64").stdout
    assert "epoch   2/2" in out and "best val accuracy" in out
    ckpt = checkpoints.read_checkpoint(model)
    assert ckpt["config"]["model"] == "cnn3" and ckpt["config"]["hidden_dim"] == 64

    report = json.loads(fer_opt("evaluate", "--model", model, "--data", sample_csv, "--split", "val", "--json",
                                "--precision", "fp32", "--plot", tmp_path / "cm.png").stdout)
    confusion = np.array(report["confusion_matrix"])
    assert report["n"] == 150 and report["accuracy"] == pytest.approx(np.trace(confusion) / 150, abs=1e-9)
    assert confusion.sum() == 150 and set(report["per_class"]) == set(data.CLASSES)
    assert (tmp_path / "cm.png").stat().st_size > 1000
    assert abs(report["accuracy"] - ckpt["meta"]["val_accuracy"]) < 1e-6
    text = fer_opt("evaluate", "--model", model, "--data", sample_csv).stdout
    assert "precision" in text and "confusion matrix" in text

    face = tmp_path / "face.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (120, 90, 3), dtype=np.uint8)).save(face)
    # The trained model with hand-set output weights: its answer is known whatever the face.
    known = {"Angry": 0.05, "Disgust": 0.02, "Fear": 0.08, "Happy": 0.1, "Sad": 0.15, "Surprise": 0.45, "Neutral": 0.15}
    net, cfg = checkpoints.model_from_checkpoint(ckpt, torch.device("cpu"))
    last = [m for m in net.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([known[c] for c in data.CLASSES]).log())
    checkpoints.save_checkpoint(tmp_path / "known.pt", net.eval(), cfg)
    lines = fer_opt("predict", "--model", tmp_path / "known.pt", face, face, "--json", "--no-detect").stdout.splitlines()
    [pred] = json.loads(lines[0])["faces"]
    assert len(lines) == 2 and pred["emotion"] == "Surprise" and pred["box"] == [0, 0, 90, 120]
    assert pred["probabilities"] == pytest.approx(known, abs=1e-3)

    missing = fer_opt("evaluate", "--model", model, "--data", sample_csv, "--split", "test", check=False)
    assert missing.returncode == 2 and "no 'test' split" in missing.stderr


@pytest.mark.parametrize("options", [dict(), dict(scheduler="onecycle", ema=0.9, mixup=0.4, optimizer="sgd")])
def test_an_interrupted_run_resumes_on_the_same_path(tmp_path, options):
    cfg = TrainConfig(model="cnn_small", epochs=4, batch_size=16, seed=5, **options)
    cpu = torch.device("cpu")
    straight = trainer.train(cfg, _tiny_data(), device=cpu, log=None)

    class Killed(Exception):
        pass

    def die_after_2(stats):
        if stats.epoch == 2:
            raise Killed

    state = tmp_path / "trial.state.pt"
    with pytest.raises(Killed):
        trainer.train(cfg, _tiny_data(), device=cpu, state=state, on_epoch=die_after_2, log=None)
    resumed = trainer.train(cfg, _tiny_data(), device=cpu, state=state, log=None)
    assert resumed.resumed_at == 2 and resumed.epochs_run == 4
    assert [h.train_loss for h in resumed.history] == [h.train_loss for h in straight.history]
    assert resumed.best_val_acc == straight.best_val_acc


def test_a_state_file_of_another_config_or_data_is_ignored_and_says_why(tmp_path):
    cpu = torch.device("cpu")
    state = tmp_path / "s.pt"
    cfg = TrainConfig(model="mlp", epochs=2)
    trainer.train(cfg.replace(epochs=1), _tiny_data(), device=cpu, state=state, log=None)
    said = []
    other = trainer.train(cfg.replace(lr=0.01), _tiny_data(), device=cpu, state=state, log=said.append)
    assert other.resumed_at == 0 and other.epochs_run == 2
    assert f"{state}: saved by a run with another config (epochs 1 -> 2, lr 0.001 -> 0.01); starting afresh" in said
    said.clear()
    other = trainer.train(cfg.replace(lr=0.01), _tiny_data(seed=1), device=cpu, state=state, log=said.append)
    assert other.resumed_at == 0 and f"{state}: saved by a run on other data; starting afresh" in said
    state.write_bytes(b"half a file")
    said.clear()
    assert trainer.train(cfg, _tiny_data(), device=cpu, state=state, log=said.append).resumed_at == 0
    assert said[0].startswith(f"{state}: unreadable")


def test_train_stopped_by_ctrl_c_resumes_to_the_same_model(tmp_path, sample_csv):
    args = ("train", "--data", sample_csv, "--epochs", "4", "--device", "cpu", "--set", "hidden_dim=32",
            "--set", "equalize=false")
    fer_opt(*args, "--out", tmp_path / "straight.pt")
    model = tmp_path / "model.pt"
    stopped = fer_opt_interrupted(*args, "--out", model, after="epoch   1/4")
    assert stopped.returncode == 130 and "Traceback" not in stopped.stderr and "Aborted" not in stopped.stderr
    [line] = stopped.stderr.strip().splitlines()
    done = int(re.fullmatch(r"error: training stopped by SIGINT after epoch (\d) of 4; run the same command again "
                            r"to resume", line).group(1))
    assert 1 <= done < 4 and (tmp_path / "model.state.pt").exists()
    resumed = fer_opt(*args, "--out", model).stdout
    assert f"resuming after epoch {done} of 4" in resumed and "epoch   4/4" in resumed
    assert f"epoch {done:3d}/4" not in resumed, "finished epochs are not run again"
    assert not (tmp_path / "model.state.pt").exists(), "a finished run leaves no state behind"
    straight, again = (checkpoints.read_checkpoint(p) for p in (tmp_path / "straight.pt", model))
    assert again["meta"]["epoch"] == straight["meta"]["epoch"]
    assert all(torch.equal(again["state_dict"][k], v) for k, v in straight["state_dict"].items())
    assert f"{model} exists: this run replaces it" in fer_opt(*args, "--out", model, "--epochs", "1").stdout


def test_the_shipped_model_predicts_out_of_the_box(tmp_path):
    path = ROOT / "fer_optuna" / "weights" / "fer2013-best.pt"
    # A full-width VGG with fp16 weights: it ships inside the wheel, so it is kept lean.
    assert path.stat().st_size < 20 * 2**20
    assert all(v.dtype in (torch.float16, torch.int64) for v in checkpoints.read_checkpoint(path)["state_dict"].values())
    ckpt = checkpoints.read_checkpoint(path)
    origin = ckpt["meta"]["provenance"]  # where it came from: its recipe, selected on val of the original pixels
    assert origin["recipe"] == "models/fer2013-best-editions.yaml" and "fer2013-sota.yaml" in origin["study"]
    assert origin["val_accuracy"] == pytest.approx(ckpt["meta"]["val_accuracy"], abs=1e-6) and origin["val_accuracy"] > 0.655
    # Two stages, each with the recipe that made it: 60 epochs on a GPU, then the fine-tune with degraded copies.
    assert origin["init"]["provenance"]["recipe"] == "models/fer2013-best.yaml"
    for meta in (ckpt["meta"], origin["init"]):
        assert (ROOT / meta["provenance"]["recipe"]).read_text() == meta["recipe_text"]
    # The recipe made the weights; the low-pass was set in their pixel pipeline afterwards, and says so.
    after = origin["pipeline_after_training"]
    assert after["set"] == {"smooth": 0.5} and "smooth 0.5" in after["accuracy"]
    recipe = load_config(ROOT / origin["recipe"]).replace(**after["set"])
    # Fields added since (distillation's) are missing from its config and load as their defaults.
    assert recipe.to_dict() == {**TrainConfig().to_dict(), **ckpt["config"], "provenance": {}}, "the recipe made it"
    assert ckpt["config"]["equalize"] is True and ckpt["config"]["degrade"] > 0
    # A real face with a known answer: the smiling portrait, cut to its box (checked by eye), is happy.
    x, y, w, h = json.loads((ROOT / "tests" / "photos" / "faces.json").read_text())["obama.jpg"]
    face = tmp_path / "face.png"
    Image.open(ROOT / "tests" / "photos" / "obama.jpg").crop((x, y, x + w, y + h)).save(face)
    [pred] = json.loads(fer_opt("predict", "--model", path, face, "--json", "--no-detect").stdout)["faces"]
    assert pred["emotion"] == "Happy" and pred["probabilities"]["Happy"] > 0.8


def test_freeze_keeps_the_first_layers_and_their_batchnorm_statistics(tmp_path):
    start = tmp_path / "start.pt"
    checkpoints.save_checkpoint(start, build_model("cnn_small", 0.3, 64), TrainConfig(model="cnn_small", hidden_dim=64))
    cfg = TrainConfig(model="cnn_small", hidden_dim=64, epochs=1, batch_size=32, lr=1e-2, init=str(start), freeze=1)
    trainer.train(cfg, _tiny_data(), device=torch.device("cpu"), checkpoint=tmp_path / "out.pt", log=None)
    before = checkpoints.read_checkpoint(start)["state_dict"]
    after = checkpoints.read_checkpoint(tmp_path / "out.pt")["state_dict"]
    # cnn_small: 0 conv, 1 BatchNorm (frozen); 4 conv, 5 BatchNorm, then the head (trained).
    for key in ("0.weight", "1.weight", "1.bias", "1.running_mean", "1.running_var"):
        assert torch.equal(before[key], after[key]), key
    for key in ("4.weight", "5.weight", "5.running_mean", "5.running_var", "13.weight"):
        assert not torch.equal(before[key], after[key]), key
    with pytest.raises(FerOptError, match="freeze' is 3, but cnn_small has 2 conv layers; give 0"):
        trainer.train(cfg.replace(freeze=3), _tiny_data(), device=torch.device("cpu"), log=None)
    with pytest.raises(FerOptError, match="freeze' is -1"):
        TrainConfig(freeze=-1)
