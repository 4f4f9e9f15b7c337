"""The `fer-opt` command line. Commands are thin: they parse, call a library function a Python user can
call the same way, print. The environment is read here, once (Settings.from_env), and errors get their
command-line flag, or the variable that sets their option, here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .errors import FerOptError
from .options import VARIABLES, Settings

ARTIFACTS_HELP = ("Artifact store for each trial's checkpoint, run state and figures: a folder, or s3://BUCKET/PREFIX "
                  "(endpoint and keys from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)")
DEVICE_OPTION = click.option("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N.")
STUDY_OPTION = click.option("--study", "study_name", help="Study name [default: the storage's only study].")
PRECISION_OPTION = click.option(
    "--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", envvar="FER_OPT_PRECISION", show_envvar=True,
    help="Inference precision. fp32 gives the same answers on every machine and through ONNX; bf16 autocast "
         "is faster on CPUs with AVX512-bf16 or AMX and on GPUs, and moves probabilities by up to about 0.01.")
DATA_HELP = "FER2013: the Kaggle fer2013.csv (.gz/.xz/.zip/.tar.gz too), an image folder (train/, test/), or a .npz"
LABELS_HELP = "FER+ votes (fer2013new.csv) for the data's rows, which replace its labels (docs/data.md)."


class Group(click.Group):
    """Turns the project's errors into one line and exit status 2 (130/143 when stopped), never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except FerOptError as e:
            fix = (f" (command line: {e.flag})" if e.flag else  # the flag that makes the fix, or the variable that does
                   f" (environment: {VARIABLES[e.setting]})" if e.setting else "")
            click.echo(f"error: {e}{fix}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:  # Ctrl-C before a command took over its signals: nothing was kept
            click.echo("error: stopped by SIGINT", err=True)
            sys.exit(130)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="fer-optuna")
@click.pass_context
def main(ctx: click.Context) -> None:
    """fer-optuna: find the best CNN for facial-expression recognition (FER2013) with Optuna.

    Single runs: `train`, `evaluate`, `predict`. Studies: `studies`, `create-study`, `worker`,
    `status`, `export`, `dashboard`, or `run` for all of it in one command.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ctx.obj = Settings.from_env()  # each command takes it with @click.pass_obj


# --------------------------------------------------------------------------- data and models


@main.group()
def data() -> None:
    """Look at a FER2013 source."""


@data.command("inspect")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--resize", is_flag=True, help="Resize images that are not 48x48 instead of refusing them.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: counts, quality checks, notes, cache.")
@click.pass_obj
def data_inspect(settings: Settings, path: Path, resize: bool, as_json: bool) -> None:
    """Images per split and class; blank images, exact duplicates (within and across splits) and
    duplicates with conflicting labels; where the parsed cache lives.

    Training can leave out blank images (drop_blank: true) and train images that also appear
    in val or test (drop_cross_split: true), in a config or with `train --set`.
    """
    from .training import data as fer_data
    from .training import quality

    report = quality.inspect(fer_data.load(path, resize=resize, options=settings.data))
    click.echo(json.dumps(report) if as_json else quality.format_inspect(report))


@main.command()
def models() -> None:
    """The model registry, with parameter counts at the default size."""
    from .training.config import TrainConfig
    from .training.models import MODELS, build_model, count_parameters, describe

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
@click.option("--out", type=click.Path(path_type=Path), default="model.pt",
              help="Where the best checkpoint (weights + config) goes; OUT's stem + .state.pt keeps the run's state.")
@DEVICE_OPTION
@click.option("--model", help="Override the config's model.")
@click.option("--epochs", type=int, help="Override the config's epochs.")
@click.option("--batch-size", type=int, help="Override the config's batch_size.")
@click.option("--lr", type=float, help="Override the config's lr.")
@click.option("--seed", type=int, help="Override the config's seed.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override any config field; repeatable.")
@click.option("--resize", is_flag=True, help="Resize source images that are not 48x48.")
@click.option("--labels", type=click.Path(path_type=Path), help=LABELS_HELP)
@click.pass_obj
def train(settings, config_path, data_path, out, device, model, epochs, batch_size, lr, seed, sets, resize, labels) -> None:
    """Train one model; keeps the checkpoint with the best val (PublicTest) accuracy.

    The run's state is saved after every epoch: stopped (Ctrl-C, SIGTERM, a crash), the same
    command resumes after the last finished epoch. A changed config or data starts afresh.
    """
    from . import pipeline

    flags = {"model": model, "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed}
    overrides = {k: v for k, v in flags.items() if v is not None} | _parse_set(sets)
    pipeline.train(config_path, data_path, out=out, device=device, overrides=overrides, resize=resize, log=click.echo,
                   settings=settings, labels=labels)


@main.command()
@click.option("--model", "model_path", type=click.Path(path_type=Path),
              help="A bundled model's name (fer2013, ferplus), a checkpoint from `train`, or an ensemble [default: fer2013].")
@click.option("--data", "data_path", required=True, type=click.Path(path_type=Path), envvar="FER_OPT_DATA", help=DATA_HELP)
@click.option("--labels", type=click.Path(path_type=Path), help=LABELS_HELP)
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="val", help="val is PublicTest, test is PrivateTest.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@click.option("--plot", type=click.Path(path_type=Path), help="Also write the confusion matrix as a PNG.")
@click.option("--tta", is_flag=True, help="Average over test-time views: mirror images, and 10 crops for a model trained with crops.")
@DEVICE_OPTION
@PRECISION_OPTION
@click.pass_obj
def evaluate(settings, model_path, data_path, labels, split, as_json, plot, tta, device, precision) -> None:
    """Accuracy, per-class precision/recall/F1 and the confusion matrix on a split."""
    from . import pipeline
    from .training import metrics

    rep, architecture = pipeline.evaluate(model_path, data_path, split=split, tta=tta, device=device, precision=precision,
                                          plot=plot, options=settings.data, labels=labels)
    if as_json:
        click.echo(json.dumps(rep))
        return
    click.echo(f"{rep['model']} ({architecture}) on {split}{' with TTA' if tta else ''}, {precision}")
    click.echo(metrics.format_report(rep))
    if plot:
        click.echo(f"confusion matrix plot: {plot}")


@main.command()
@click.argument("inputs", nargs=-1, required=True, metavar="PHOTOS_OR_VIDEOS...")
@click.option("--model", "model_path", type=click.Path(path_type=Path),
              help="A bundled model's name (fer2013, ferplus), a checkpoint from `train` or `export --model`, an ensemble, "
                   "or an .onnx file [default: fer2013].")
@click.option("--detector", type=click.Choice(["mtcnn", "yunet", "haar"]), default="mtcnn",
              help="Face detector: mtcnn finds the most faces with the fewest false boxes; yunet is faster and misses "
                   "more small faces; haar (OpenCV's cascade) for comparison.")
@click.option("--no-detect", is_flag=True, help="Classify each image whole (it already is a face crop) instead of finding faces.")
@click.option("--min-face", type=click.IntRange(min=4), metavar="PX",
              help="Look for faces down to PX pixels across, upscaling the photo where the detector needs it "
                   "[default: the detector's limit, which grows with the photo; each photo's line says it].")
@click.option("-o", "--out", type=click.Path(path_type=Path),
              help="Write one row per face (per sampled frame of a video) for all inputs to this .csv or .jsonl file.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per photo (per sampled frame of a video).")
@click.option("--annotate", "annotate_dir", type=click.Path(path_type=Path),
              help="Write each photo here boxed and labelled (DIR/NAME.png); each video as DIR/NAME.mp4 with a plot of "
                   "each face's emotions over time (DIR/NAME-emotions.png).")
@click.option("--every", type=int, default=1, help="Videos: analyse every N-th frame.")
@click.option("--rate", type=float, help="Videos: analyse this many frames a second (instead of --every).")
@click.option("--tta", is_flag=True, help="Average over test-time views: mirror images, and 10 crops for a model trained with crops.")
@DEVICE_OPTION
@PRECISION_OPTION
def predict(inputs, model_path, detector, no_detect, min_face, out, as_json, annotate_dir, every, rate, tta, device,
            precision) -> None:
    """The emotion of every face in photos and videos: its box, detector score, emotion and probabilities.

    Takes image files, folders of them, quoted globs ('photos/*.jpg') and videos (any container and
    codec OpenCV reads). A 48x48 image (or any image with --no-detect) is classified whole. In a
    video each face keeps an id from frame to frame. A photo without a face says so and is not an error.
    """
    from .recognition import predict as fer_predict
    from .recognition.recognizer import Recognizer

    recognizer = Recognizer(model_path, detector=detector, device=device, precision=precision, tta=tta, min_face=min_face)
    opts = fer_predict.PredictOptions(out=out, annotate_dir=annotate_dir, as_json=as_json, detect=not no_detect,
                                      every=every, rate=rate)
    fer_predict.predict(recognizer, list(inputs), opts, click.echo)
    if annotate_dir:
        click.echo(f"annotated: {annotate_dir}", err=True)


# --------------------------------------------------------------------------- studies

STORAGE_OPTION = click.option(
    "--storage", envvar="FER_OPT_STORAGE", show_envvar=True,
    help="Study storage URL: sqlite:///PATH.db or postgresql+psycopg://USER:PASS@HOST/DB "
         "[default: sqlite:///studies/fer2013.db]")


def _open_study(storage: str | None, name: str | None, settings: Settings):
    from .search import study as fer_study
    from .search.storage import open_storage

    store = open_storage(storage, options=settings.stores)
    return fer_study.load_study(name or fer_study.single_study_name(store), store)


@main.command("create-study")
@click.option("--config", "spec_path", required=True,
              help="A study file, or the name of one that ships with fer-optuna (`fer-opt studies` lists them), e.g. quick.")
@STORAGE_OPTION
@click.option("--name", help="Study name [default: the study file's name].")
@click.option("--data", envvar="FER_OPT_DATA", show_envvar=True, help="Data path stored with the study [default: the study file's data:].")
@click.option("--labels", help=LABELS_HELP + " Part of the study: --skip-if-exists refuses other votes.")
@click.option("--skip-if-exists", is_flag=True, help="Succeed if the same study (same study file) already exists.")
@click.option("--replace", is_flag=True, help="Delete an existing study of that name, trials included, and start over.")
@click.option("--artifacts", envvar="FER_OPT_ARTIFACTS", show_envvar=True,
              help=ARTIFACTS_HELP + " [default: a folder 'artifacts' beside a SQLite file; none for PostgreSQL]")
@click.pass_obj
def create_study(settings, spec_path, storage, name, data, labels, skip_if_exists, replace, artifacts) -> None:
    """Create a study from a study file; workers then build everything from the storage (and its artifact store)."""
    from .search import study as fer_study
    from .search.artifacts import study_store
    from .search.storage import mask_url, storage_url

    created, new = fer_study.create(spec_path, storage, name=name, data=data, skip_if_exists=skip_if_exists,
                                    replace=replace, artifacts=artifacts, options=settings.stores, labels=labels,
                                    data_options=settings.data)
    url = mask_url(storage_url(storage))
    verb = "created" if new else "exists, unchanged:"
    click.echo(f"study {created.study_name} {verb} on {url} (data {created.user_attrs[fer_study.ATTR_DATA]})")
    store = study_store(created)
    click.echo(f"trial files: artifacts in {store.url}" if store else
               "trial files: no artifact store, so each trial's files stay on its worker's disk "
               "(--artifacts s3://BUCKET/PREFIX shares them between machines)")


@main.command()
@STUDY_OPTION
@STORAGE_OPTION
@click.option("--gpu", default="all", help="cpu, a GPU index, a list like 0,1, or all (every GPU; CPU if none).")
@click.option("--per-gpu", default="1", help="Worker processes per device, or auto (1 on CPU; 4 per GPU, fewer if the host has under 4 cores per GPU).")
@click.option("--n-trials", type=int, help="Stop after this many trials of this worker [default: the study's budget].")
@click.option("--timeout", type=float, help="Start no new trial after this many seconds.")
@click.option("--data", envvar="FER_OPT_DATA", help="This machine's copy of the data [default: the path stored with the study] [env FER_OPT_DATA]")
@click.option("--labels", help="This machine's copy of the FER+ votes [default: the path stored with the study].")
@click.option("--checkpoint-dir", default="studies/checkpoints",
              help="This host's copy of each trial's best checkpoint and run state: DIR/STUDY/trial-N.pt.")
@click.option("--artifacts", help=ARTIFACTS_HELP + " [default: the one the study records]")
@click.option("--wandb", is_flag=True, help="Log each trial as a W&B run, grouped by study (WANDB_MODE=offline works).")
@click.option("--threads", type=int, help="CPU threads per worker [default: all cores, divided among CPU workers].")
@click.pass_obj
def worker(settings, study_name, storage, gpu, per_gpu, n_trials, timeout, data, labels, checkpoint_dir, artifacts, wandb,
           threads) -> None:
    """Pull trials from a study until its trial budget is spent, then exit 0.

    Ctrl-C or SIGTERM fails the running trial and queues it again (it resumes from its last
    epoch), then exits 130 or 143; a second one exits at once.
    """
    from .search import study as fer_study
    from .search import worker as fer_worker
    from .search.storage import open_storage

    name = study_name
    if not name:
        looked_up = open_storage(storage, options=settings.stores)
        name = fer_study.single_study_name(looked_up)
        looked_up.engine.dispose()  # its connection slot is for the storage the worker opens next
    devices = fer_worker.parse_devices(gpu)
    per = fer_worker.auto_per_device(devices) if per_gpu == "auto" else int(per_gpu)
    opts = fer_worker.WorkerOptions(study=name, storage=storage, device=devices[0], data=data, labels=labels,
                                    n_trials=n_trials, timeout=timeout, checkpoint_dir=checkpoint_dir, artifacts=artifacts, wandb=wandb,
                                    threads=threads, settings=settings)
    sys.exit(fer_worker.launch(opts, devices, per))


@main.command()
@STUDY_OPTION
@STORAGE_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_obj
def status(settings, study_name, storage, as_json) -> None:
    """Trials by state, the best trial, running trials and throughput."""
    from .search import study as fer_study
    from .search.storage import storage_url

    found, spec = _open_study(storage, study_name, settings)
    info = fer_study.status(found, spec)
    click.echo(json.dumps(info, default=str) if as_json else fer_study.format_status(info, storage_url(storage)))


@main.command()
@STUDY_OPTION
@STORAGE_OPTION
@click.option("-o", "--out", type=click.Path(path_type=Path), default="best.yaml", help="Config file to write; with --top K, OUT-1.yaml ... OUT-K.yaml.")
@click.option("--top", type=int, default=1, help="Export the K best trials.")
@click.option("--model", "model_out", type=click.Path(path_type=Path),
              help="Also write the best trial's trained model (its best checkpoint) here, provenance inside.")
@click.option("--onnx", "onnx_out", type=click.Path(path_type=Path),
              help="Write the model as ONNX (pixel pipeline inside, any batch size): the best trial's, or --checkpoint's.")
@click.option("--checkpoint", type=click.Path(path_type=Path),
              help="Convert this model file (or bundled model, by name) instead (with --onnx, or --model and --fp16); no study needed.")
@click.option("--fp16", is_flag=True, help="With --model: store the weights in fp16, half the file (they load as fp32).")
@click.option("--pick", "rule", metavar="RULE",
              help="Export the most accurate trial that keeps to RULE instead, e.g. 'latency_ms<=3' or "
                   "'latency_ms<=3,params<2e6' (measures: val_accuracy, params, macs, size_mb, latency_ms, latency_b32_ms).")
@click.pass_obj
def export(settings, study_name, storage, out, top, model_out, onnx_out, checkpoint, fp16, rule) -> None:
    """Write the best feasible trial's training config, for `fer-opt train --config`, and optionally its model.

    In a study with constraints, the best trial is the most accurate one that keeps to them; in a
    multi-objective study, --pick chooses from the Pareto front that `fer-opt status` prints."""
    from .search import export as fer_export
    from .search.storage import storage_url

    if checkpoint:
        fer_export.convert(checkpoint, model_out=model_out, onnx_out=onnx_out, fp16=fp16, log=click.echo)
        return
    found, spec = _open_study(storage, study_name, settings)
    fer_export.export(found, spec, storage_url(storage), out, top=top, rule=rule, model_out=model_out, onnx_out=onnx_out,
                      fp16=fp16, log=click.echo, options=settings.stores)


@main.command()
@STORAGE_OPTION
@click.option("--host", default="127.0.0.1", help="Interface to listen on; 0.0.0.0 exposes the dashboard to the network.")
@click.option("--port", default=8080, type=int, help="Port to listen on.")
@click.option("--artifacts", help="The artifact store whose files the trial pages show [default: the studies' own].")
@click.pass_obj
def dashboard(settings, storage, host, port, artifacts) -> None:
    """Serve optuna-dashboard on the study storage, with the studies' artifact store: trial pages list and preview
    each trial's checkpoint, confusion matrix and learning curve."""
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"warning: listening on {host}: anyone who can reach this machine can see and edit the studies", err=True)
    from optuna_dashboard import run_server

    from .search.artifacts import storage_store
    from .search.storage import mask_url, open_storage, storage_url

    store = open_storage(storage, options=settings.stores)
    files = storage_store(store, artifacts, settings.stores)
    click.echo(f"dashboard for {mask_url(storage_url(storage))} at http://{host}:{port}/dashboard/ (Ctrl-C to stop)")
    if files is not None:
        click.echo(f"trial files from {files.url}")
    run_server(store, host=host, port=port, artifact_store=files)


@main.command()
@STUDY_OPTION
@STORAGE_OPTION
@click.option("--top", type=int, default=5, help="How many of the best trials vote.")
@click.option("-o", "--out", type=click.Path(path_type=Path), default="ensemble.pt", help="Ensemble file; evaluate and predict take it like a model.")
@click.option("--data", help="Measure the ensemble's val accuracy on this data [default: the study's data].")
@DEVICE_OPTION
@PRECISION_OPTION
@click.pass_obj
def ensemble(settings, study_name, storage, top, out, data, device, precision) -> None:
    """Soft-voting ensemble of the study's K best trials (their best checkpoints); in a study with
    constraints, of the K best that keep to them."""
    from .training import inference, trainer
    from .search import report
    from .search import study as fer_study

    from .search import rungs

    found, spec = rungs.top(*_open_study(storage, study_name, settings), click.echo)
    members = report.build_ensemble(found, top, out, settings.stores)
    click.echo(f"wrote {out}: trials {', '.join(str(t.number) for t in members)} "
               f"(val {', '.join(f'{t.values[0]:.4f}' for t in members)})"
               + ("; feasible trials only" if spec.constraints else ""))
    loaded = fer_study.load_data(found, data, options=settings.data)
    acc, _ = inference.val_accuracy(Path(out), loaded, trainer.resolve_device(device), bf16=inference.inference_bf16(precision))
    click.echo(f"ensemble val accuracy {acc:.4f} ({acc - members[0].values[0]:+.4f} over the best trial)")


@main.command("report")
@STUDY_OPTION
@STORAGE_OPTION
@click.option("-o", "--out", type=click.Path(path_type=Path), default="report.html", help="The HTML page to write.")
@click.option("--data", help="Evaluate the best trial on this data [default: the study's data]; 'none' to skip.")
@click.option("--top", type=int, default=5, help="Ensemble size shown in the report.")
@DEVICE_OPTION
@PRECISION_OPTION
@click.pass_obj
def report_cmd(settings, study_name, storage, out, data, top, device, precision) -> None:
    """One self-contained HTML page: history, pruning, importances, the best trial, the ensemble's gain."""
    from .training import inference, trainer
    from .search import report
    from .search import study as fer_study

    found, spec = _open_study(storage, study_name, settings)
    loaded = None if data == "none" else fer_study.load_data(found, data, options=settings.data)
    report.write_report(found, spec, out, loaded, trainer.resolve_device(device), top, inference.inference_bf16(precision),
                        settings.stores)
    click.echo(f"wrote {out}")


@main.group()
def storage() -> None:
    """Move studies between storages."""


@storage.command("copy")
@click.option("--from", "from_url", required=True, help="Source storage URL, e.g. sqlite:///studies/fer2013.db.")
@click.option("--to", "to_url", required=True, help="Target storage URL, e.g. postgresql+psycopg://user:pass@host/db.")
@STUDY_OPTION
@click.option("--to-name", help="Name in the target [default: the same].")
@click.pass_obj
def storage_copy(settings, from_url, to_url, study_name, to_name) -> None:
    """Copy a study, its trials and attributes, e.g. from the SQLite file to PostgreSQL when you grow."""
    from .search import study as fer_study
    from .search.artifacts import study_store
    from .search.storage import mask_url

    copied = fer_study.copy(from_url, to_url, study_name, to_name, settings.stores)
    click.echo(f"copied study {copied.study_name} to {mask_url(to_url)}")
    store = study_store(copied)
    if store is not None:
        click.echo(f"its artifacts stay in {store.url}, which both copies refer to; to move them too, copy that "
                   "folder or bucket and pass the new place to the workers (--artifacts)")


@main.command("run")
@click.option("--data", "data_path", required=True, envvar="FER_OPT_DATA", help=DATA_HELP + " [env FER_OPT_DATA]")
@click.option("--labels", help=LABELS_HELP + " Stored with a new study [default: the study's].")
@STORAGE_OPTION
@click.option("--study-file", help="A study file, or a shipped study's name [default: fer2013-cnn3 with GPUs, quick on CPU].")
@click.option("--gpu", default="all", help="cpu, a GPU index, a list like 0,1, or all.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default="runs", help="Folder for best.yaml and best.pt.")
@click.option("--port", type=int, default=8080, help="Dashboard port during the study; 0 for none.")
@click.option("--checkpoint-dir", default="studies/checkpoints", help="Each trial's best checkpoint goes to DIR/STUDY/trial-N.pt.")
@click.pass_obj
def run_all(settings, data_path, labels, storage, study_file, gpu, out_dir, port, checkpoint_dir) -> None:
    """The main job: create the study, run workers on every GPU (CPU: quick.yaml), export the best config, train it.

    Stopped (Ctrl-C, SIGTERM, a crash), the same command goes on: the study from its trials, the final fit
    from its last finished epoch.
    """
    from . import pipeline

    pipeline.run(data_path, storage=storage, spec_path=study_file, out_dir=out_dir, gpu=gpu, port=port,
                 checkpoint_dir=checkpoint_dir, log=click.echo, settings=settings, labels=labels)


@main.command()
def studies() -> None:
    """The study files that ship with fer-optuna, which `create-study --config NAME` and `run --study-file NAME`
    take by name; copy one to change it."""
    from .search import shipped

    click.echo(f"study files in {shipped.SHIPPED}:")
    for name, description in shipped.listing():
        click.echo(f"  {name:<20}{description}")


if __name__ == "__main__":
    main()
