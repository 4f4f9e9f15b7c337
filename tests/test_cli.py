"""The library stands without its command line: settings are read once, at the edge; errors name the fix
in the library's terms and the CLI adds the flag; commands are thin; the study files ship in the package."""

import ast
import gzip
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import ROOT, fer_opt
from fer_optuna.cli import main
from fer_optuna.errors import FerOptError
from fer_optuna.options import DataOptions, Settings, StoreOptions
from fer_optuna.search import shipped
from fer_optuna.search.worker import WorkerOptions

PACKAGE = ROOT / "fer_optuna"
EDGE = {"cli.py", "options.py"}  # the only modules that read the environment


def environment_reads(source: str) -> list[int]:
    """Lines that read os.environ or os.getenv; handing the whole environment to a child process
    ({**os.environ, ...}) and writing one variable are not reads."""
    tree = ast.parse(source)
    handed_on = {id(v) for node in ast.walk(tree) if isinstance(node, ast.Dict) for k, v in zip(node.keys, node.values)
                 if k is None}
    written = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Subscript)
               and isinstance(node.ctx, (ast.Store, ast.Del))}
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and ast.unparse(node) in ("os.environ", "os.getenv"):
            if id(node) not in handed_on and id(node) not in written:
                lines.append(node.lineno)
    return sorted(lines)


def test_only_the_edge_reads_the_environment():
    found = {f"{path.relative_to(PACKAGE)}:{line}" for path in PACKAGE.rglob("*.py") if path.name not in EDGE
             or path.parent != PACKAGE for line in environment_reads(path.read_text())}
    # OpenCV reads its FFmpeg log level from the environment: video.py sets it around opening a video.
    assert {f for f in found if not f.startswith("recognition/video.py")} == set()


def test_the_check_sees_a_read():
    assert environment_reads("import os\nx = os.environ.get('FER_OPT_X')\ny = os.getenv('Z')\n") == [2, 3]
    assert environment_reads("import os\nenv = {**os.environ, 'A': '1'}\nos.environ['B'] = '2'\n") == []


def test_from_env_reads_every_setting_and_defaults_the_rest():
    env = {"FER_OPT_CACHE": "/c", "FER_OPT_MAX_INPUT_MB": "1.5", "FER_OPT_HEARTBEAT": "2", "FER_OPT_DB_RETRY_SECONDS": "3",
           "FER_OPT_ARTIFACT_RETRY_SECONDS": "4", "FER_OPT_CPU_BF16": "1"}
    assert Settings.from_env(env) == Settings(DataOptions(Path("/c"), 1.5), StoreOptions(2, 3.0, 4.0), True)
    assert Settings.from_env({"XDG_CACHE_HOME": "/x"}).data.cache_dir == Path("/x/fer-optuna")
    assert Settings.from_env({}) == Settings()
    for bad in ({"FER_OPT_HEARTBEAT": "soon"}, {"FER_OPT_CPU_BF16": "2"}):
        with pytest.raises(FerOptError, match=next(iter(bad))):
            Settings.from_env(bad)


def test_the_docs_list_every_variable_the_edge_reads():
    read = set(re.findall(r"FER_OPT_[A-Z0-9_]+", (PACKAGE / "options.py").read_text() + (PACKAGE / "cli.py").read_text()))
    page = (ROOT / "docs" / "development.md").read_text()
    listed = set(re.findall(r"^\| `(FER_OPT_[A-Z0-9_]+)` \|", page, flags=re.M))
    assert len(read) >= 10 and listed == read


def test_the_cli_hands_the_environment_to_the_library(tmp_path):
    bomb = tmp_path / "bomb.csv.gz"
    bomb.write_bytes(gzip.compress(b"0" * (3 * 2**20)))
    proc = fer_opt("data", "inspect", bomb, env={"FER_OPT_MAX_INPUT_MB": "1"}, check=False)
    assert proc.returncode == 2 and "decompresses to more than 1 MB" in proc.stderr
    assert proc.stderr.strip().endswith("(raise DataOptions.max_input_mb if it really is) (environment: FER_OPT_MAX_INPUT_MB)")


def test_importing_and_plotting_change_no_global_state(tmp_path):
    code = """
import os, sys
import matplotlib
before = dict(os.environ)
import numpy as np
import fer_optuna.cli, fer_optuna.pipeline, fer_optuna.recognition.video as video
from fer_optuna.training import metrics
assert dict(os.environ) == before, "importing changed the environment"
rep = metrics.report(np.arange(7), np.arange(7))
metrics.plot_confusion(rep, "cm.png")
metrics.plot_learning_curve([{"epoch": 1, "train_loss": 1, "val_loss": 1, "train_acc": 0.5, "val_acc": 0.5}], "lc.png")
from pathlib import Path
video.plot_emotions({1: [0.0, 1.0]}, {1: [{"Happy": 0.5, "Sad": 0.5}] * 2}, Path("em.png"), "t")
assert matplotlib.rcParams._get_backend_or_none() is None, "a plot chose matplotlib's backend for the process"
assert "matplotlib.pyplot" not in sys.modules
"""
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_a_library_error_names_the_parameter_and_the_cli_adds_the_flag(tmp_path):
    for split in ("train", "test"):
        (tmp_path / split / "happy").mkdir(parents=True)
        Image.new("L", (64, 64)).save(tmp_path / split / "happy" / "a.png")
    from fer_optuna.training import data

    with pytest.raises(FerOptError, match=r"expected 48x48 \(load with resize=True to resize\)$") as err:
        data.load(tmp_path, use_cache=False)
    assert err.value.flag == "--resize" and "--" not in str(err.value)
    result = CliRunner().invoke(main, ["data", "inspect", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.strip().endswith("expected 48x48 (load with resize=True to resize) (command line: --resize)")


def test_library_errors_name_no_flag():
    """Every FerOptError raised in the wings gives its flag in `flag`, not in the message."""
    found = []
    for path in PACKAGE.glob("*/*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func).endswith("Error") and node.args:
                text = ast.unparse(node.args[0])
                if " --" in text or text.startswith(("'--", '"--', "f'--", 'f"--')):
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert found == []


def test_worker_options_are_named_never_positional():
    with pytest.raises(TypeError):
        WorkerOptions("tiny", None, "cpu")
    assert WorkerOptions(study="tiny", storage=None, device="cpu").settings == Settings()


def test_every_command_is_a_thin_shell():
    """At most 15 lines of code (after the docstring) in each command: the work is in the library."""
    tree = ast.parse((PACKAGE / "cli.py").read_text())
    sizes = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and any("command" in ast.unparse(d) for d in node.decorator_list):
            body = node.body[1:] if isinstance(node.body[0], ast.Expr) else node.body
            sizes[node.name] = node.end_lineno - body[0].lineno + 1
    assert "export" in sizes and "studies" in sizes
    assert {name: n for name, n in sizes.items() if n > 15} == {}


def test_the_study_files_ship_in_the_package_and_the_repository_links_to_them():
    names = shipped.names()
    assert {"quick", "fer2013-cnn3"} <= set(names)
    assert sorted(p.stem for p in (ROOT / "studies").glob("*.yaml")) == names
    for name in names:
        assert (ROOT / "studies" / f"{name}.yaml").resolve() == shipped.SHIPPED / f"{name}.yaml"
    assert shipped.find("fer2013-cnn3") == shipped.find("fer2013-cnn3.yaml") == shipped.SHIPPED / "fer2013-cnn3.yaml"
    assert shipped.find(ROOT / "tests" / "studies" / "tiny.yaml").name == "tiny.yaml"
    with pytest.raises(FerOptError, match="nor a shipped study \\(those are: fer2013-cnn3, "):
        shipped.find("fer2013-cnn")
    listed = CliRunner().invoke(main, ["studies"]).output
    for name, description in shipped.listing():
        assert description and f"{name:<20}{description}" in listed
