"""The package as a user gets it: a wheel built from the sources, installed into a fresh virtual
environment, used from a folder far from the repository, with no --model."""

import json
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from fer_optuna.search import shipped

API = """
import fer_optuna
from fer_optuna import Recognizer
recognizer = Recognizer(device="cpu")
faces = recognizer.faces("photo.jpg")
print(fer_optuna.__file__)
print([face.emotion for face in faces])
"""


@pytest.mark.slow
def test_the_wheel_carries_the_model_and_works_without_the_repository(tmp_path, sample_csv):
    # Build from a copy of what the wheel is made of, so nothing of the checkout's own state leaks in.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src)
    shutil.copytree(ROOT / "fer_optuna", src / "fer_optuna", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist",
                    src], check=True, capture_output=True, timeout=300)
    [wheel] = (tmp_path / "dist").glob("fer_optuna-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        models = [archive.getinfo(f"fer_optuna/weights/{name}-best.pt") for name in ("fer2013", "ferplus")]
        studies = {Path(n).stem for n in archive.namelist() if n.startswith("fer_optuna/studies/")}
    assert all(model.file_size < 20 * 2**20 for model in models)  # fp16 weights: half the fp32 file
    assert studies == set(shipped.names())

    # A fresh environment with the wheel; its dependencies (torch is 5 GB) are borrowed from the
    # test environment through a path file, which adds their folder but runs none of its .pth files,
    # so the checkout's editable install stays out.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=120)
    site = subprocess.run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    with open(f"{site}/borrowed-dependencies.pth", "w") as pth:
        pth.write(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel], check=True,
                   capture_output=True, timeout=300)

    work = tmp_path / "elsewhere"
    work.mkdir()
    shutil.copy(ROOT / "tests" / "photos" / "obama3.jpg", work / "photo.jpg")
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}
    cli = subprocess.run(["fer-opt", "predict", "photo.jpg", "--json"], cwd=work, env=env, capture_output=True, text=True,
                         timeout=300)
    assert cli.returncode == 0, cli.stderr
    [face] = json.loads(cli.stdout)["faces"]
    assert face["score"] > 0.9
    api = subprocess.run([venv / "bin" / "python", "-c", API], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert api.returncode == 0, api.stderr
    where, emotions = api.stdout.splitlines()
    assert where.startswith(site), f"fer_optuna came from {where}, not the fresh environment"
    assert emotions == f"[{face['emotion']!r}]"

    # The study files came with it: listed, and taken by name from a folder with none.
    def fer_opt(*args):
        proc = subprocess.run(["fer-opt", *map(str, args)], cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    listed = fer_opt("studies")
    assert f"study files in {site}/fer_optuna/studies" in listed
    assert all(f"  {name:<20}{description}" in listed for name, description in shipped.listing())
    created = fer_opt("create-study", "--config", "fer2013-cnn3", "--data", sample_csv, "--storage", "sqlite:///cnn3.db")
    assert "study fer2013-cnn3 created" in created
    # The main job on the 500-row sample: search, export, final fit. The shipped quick study takes
    # minutes on 2 CPU cores, so here a copy of it cut to 2 trials and 1 epoch.
    quick = yaml.safe_load((shipped.SHIPPED / "quick.yaml").read_text())
    quick |= {"n_trials": 2, "train": {**quick["train"], "epochs": 1}, "final": {**quick["final"], "epochs": 1}}
    (work / "mini.yaml").write_text(yaml.safe_dump(quick))
    ran = fer_opt("run", "--data", sample_csv, "--gpu", "cpu", "--port", "0", "--study-file", "mini.yaml")
    assert "study quick created" in ran and "final model: val (PublicTest) accuracy" in ran
    assert (work / "runs" / "best.yaml").is_file() and (work / "runs" / "best.pt").is_file()
