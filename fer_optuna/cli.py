"""The `fer-opt` command line. Commands are thin: they parse, call a module, print."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .errors import FerOptError

DATA_HELP = "FER2013: the Kaggle fer2013.csv (.gz/.xz/.zip/.tar.gz too), an image folder (train/, test/), or a .npz"


class Group(click.Group):
    """Turns the project's errors into one line and exit status 2, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except FerOptError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="fer-optuna")
def main() -> None:
    """fer-optuna: find the best CNN for facial-expression recognition (FER2013) with Optuna.

    Single runs: `train`, `evaluate`, `predict`. Studies: `create-study`, `worker`,
    `status`, `export`, `dashboard`, or `run` for all of it in one command.
    """


# --------------------------------------------------------------------------- data and models


@main.group()
def data() -> None:
    """Look at a FER2013 source."""


@data.command("inspect")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--resize", is_flag=True, help="Resize images that are not 48x48 instead of refusing them.")
def data_inspect(path: Path, resize: bool) -> None:
    """Images per split and class, and where the parsed cache lives."""
    from . import data as fer_data

    loaded = fer_data.load(path, resize=resize)
    counts = loaded.counts()
    click.echo(f"{'split':<8}" + "".join(f"{c:>10}" for c in fer_data.CLASSES) + f"{'total':>10}")
    for split, row in counts.items():
        click.echo(f"{split:<8}" + "".join(f"{v:>10d}" for v in row) + f"{row.sum():>10d}")
    for note in loaded.notes:
        click.echo(f"note: {note}")
    if "test" not in counts:
        click.echo("note: no test split (PrivateTest) in this source; `evaluate --split test` needs one")
    click.echo(f"cache: {fer_data.cache_path(path, resize)}")


@main.command()
def models() -> None:
    """The model registry, with parameter counts at the default size."""
    from .config import TrainConfig
    from .models import MODELS, build_model, count_parameters, describe

    cfg = TrainConfig()
    click.echo(f"{'model':<10}{'parameters':>12}  description (dropout {cfg.dropout}, hidden_dim {cfg.hidden_dim}, width 1)")
    for name in MODELS:
        n = count_parameters(build_model(name, cfg.dropout, cfg.hidden_dim, 1.0))
        click.echo(f"{name:<10}{n:>12,}  {describe(name)}")


# --------------------------------------------------------------------------- train / evaluate / predict


def _parse_set(values: tuple[str, ...]) -> dict:
    import yaml

    out = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep:
            raise FerOptError(f"--set {item!r}: expected KEY=VALUE, e.g. --set label_smoothing=0.1")
        out[key.strip()] = yaml.safe_load(raw)
    return out


@main.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="YAML training config (e.g. from `fer-opt export`); defaults if absent.")
@click.option("--data", "data_path", required=True, type=click.Path(path_type=Path), envvar="FER_OPT_DATA", help=DATA_HELP + " [env FER_OPT_DATA]")
@click.option("--out", type=click.Path(path_type=Path), default="model.pt", help="Where the best checkpoint (weights + config) goes.")
@click.option("--device", default="auto", help="auto, cpu, cuda or cuda:N.")
@click.option("--model", help="Override the config's model.")
@click.option("--epochs", type=int, help="Override the config's epochs.")
@click.option("--batch-size", type=int, help="Override the config's batch_size.")
@click.option("--lr", type=float, help="Override the config's lr.")
@click.option("--seed", type=int, help="Override the config's seed.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override any config field; repeatable.")
@click.option("--resize", is_flag=True, help="Resize source images that are not 48x48.")
def train(config_path, data_path, out, device, model, epochs, batch_size, lr, seed, sets, resize) -> None:
    """Train one model; keeps the checkpoint with the best val (PublicTest) accuracy."""
    from . import data as fer_data
    from . import trainer
    from .config import TrainConfig, load_config

    cfg = load_config(config_path) if config_path else TrainConfig()
    flags = {"model": model, "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed}
    cfg = cfg.replace(**{k: v for k, v in flags.items() if v is not None}, **_parse_set(sets))
    dev = trainer.resolve_device(device)
    loaded = fer_data.load(data_path, resize=resize)
    for note in loaded.notes:
        click.echo(f"note: {note}")
    click.echo(f"training {cfg.model} on {dev} for {cfg.epochs} epochs (batch {cfg.batch_size}, lr {cfg.lr:g}) -> {out}")
    result = trainer.train(cfg, loaded, device=dev, checkpoint=out)
    click.echo(f"best val accuracy {result.best_val_acc:.4f} at epoch {result.best_epoch}/{result.epochs_run} "
               f"in {result.seconds:.0f}s ({result.seconds / result.epochs_run:.1f}s/epoch); saved {out}")


@main.command()
@click.option("--model", "model_path", required=True, type=click.Path(path_type=Path), help="A checkpoint from `train`.")
@click.option("--data", "data_path", required=True, type=click.Path(path_type=Path), envvar="FER_OPT_DATA", help=DATA_HELP)
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="val", help="val is PublicTest, test is PrivateTest.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@click.option("--plot", type=click.Path(path_type=Path), help="Also write the confusion matrix as a PNG.")
@click.option("--tta", is_flag=True, help="Average over 10 views (flips and crops).")
@click.option("--device", default="auto", help="auto, cpu, cuda or cuda:N.")
def evaluate(model_path, data_path, split, as_json, plot, tta, device) -> None:
    """Accuracy, per-class precision/recall/F1 and the confusion matrix on a split."""
    from . import data as fer_data
    from . import metrics, trainer

    dev = trainer.resolve_device(device)
    model, cfg = trainer.model_from_checkpoint(trainer.read_checkpoint(model_path), dev)
    images, labels = fer_data.load(data_path).split(split)
    split_data = trainer.to_device(images, labels, dev)
    _, _, probs = trainer.evaluate(model, split_data, trainer.use_bf16(cfg.precision, dev), tta=tta)
    rep = metrics.report(labels, probs.argmax(1).cpu().numpy())
    rep |= {"split": split, "model": str(model_path), "tta": tta}
    if plot:
        metrics.plot_confusion(rep, plot, f"{model_path.name} on {split}: accuracy {rep['accuracy']:.3f}")
    if as_json:
        click.echo(json.dumps(rep))
    else:
        click.echo(f"{model_path} ({cfg.model}) on {split}{' with TTA' if tta else ''}")
        click.echo(metrics.format_report(rep))
        if plot:
            click.echo(f"confusion matrix plot: {plot}")


@main.command()
@click.option("--model", "model_path", required=True, type=click.Path(path_type=Path), help="A checkpoint from `train`.")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per image.")
@click.option("--tta", is_flag=True, help="Average over 10 views (flips and crops).")
@click.option("--device", default="auto", help="auto, cpu, cuda or cuda:N.")
def predict(model_path, images, as_json, tta, device) -> None:
    """The emotion and class probabilities of each image (any size; made 48x48 grayscale)."""
    import numpy as np
    import torch

    from . import trainer
    from .data import CLASSES, read_image

    dev = trainer.resolve_device(device)
    model, cfg = trainer.model_from_checkpoint(trainer.read_checkpoint(model_path), dev)
    batch = np.stack([read_image(p, resize=True) for p in images])
    x = torch.from_numpy(batch).unsqueeze(1).to(dev)
    probs = trainer.predict_proba(model, x, trainer.use_bf16(cfg.precision, dev), tta=tta).cpu().numpy()
    for path, p in zip(images, probs):
        best = int(p.argmax())
        if as_json:
            click.echo(json.dumps({"image": str(path), "emotion": CLASSES[best],
                                   "probabilities": {c: round(float(v), 4) for c, v in zip(CLASSES, p)}}))
        else:
            ranked = "  ".join(f"{CLASSES[i]} {p[i]:.2f}" for i in np.argsort(-p)[:3])
            click.echo(f"{path}: {CLASSES[best]}  ({ranked})")


if __name__ == "__main__":
    main()
