"""benchmarks/gpu_check.sh runs only where a GPU is lent, rarely and for minutes: a wrong path or
flag in it wastes that session, so it is checked here, where every session can run it."""

import importlib.util
import multiprocessing
import re
import subprocess
import sys

import pytest

from conftest import ROOT

GPU_CHECK = ROOT / "benchmarks" / "gpu_check.sh"


def _commands() -> list[list[str]]:
    """Each `$PY ...` command of the script, continuation lines joined, split into words."""
    text = GPU_CHECK.read_text().replace("\\\n", " ")
    return [line.split("$PY", 1)[1].split("|")[0].split() for line in text.splitlines()
            if "$PY " in line and not line.lstrip().startswith("#")]


def test_gpu_check_is_valid_bash_and_its_files_exist():
    subprocess.run(["bash", "-n", GPU_CHECK], check=True)
    paths = set(re.findall(r"\b((?:benchmarks|models|studies|tests)/[\w./-]+\.(?:py|yaml))", GPU_CHECK.read_text()))
    assert paths and all((ROOT / p).exists() for p in paths), sorted(p for p in paths if not (ROOT / p).exists())


def test_gpu_check_passes_only_flags_its_programs_take():
    checked = 0
    for words in _commands():
        if words[:2] == ["-m", "pytest"] or words[0] == "-c":
            continue
        program = words[:3] if words[:2] == ["-m", "fer_optuna.cli"] else words[:1]
        helptext = subprocess.run([sys.executable, *program, "--help"], cwd=ROOT, capture_output=True, text=True,
                                  check=True).stdout
        for flag in (w for w in words[len(program):] if w.startswith("--")):
            assert flag in helptext, f"{' '.join(program)} takes no {flag}"
        checked += 1
    assert checked >= 5


@pytest.mark.timeout(60)
def test_the_storage_benchmark_reports_a_worker_dead_before_the_start_and_starts_the_rest(capsys):
    spec = importlib.util.spec_from_file_location("storage_benchmark", ROOT / "benchmarks" / "storage.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Queue()
    procs = [ctx.Process(target=sys.exit, args=(3,), name="w0"), ctx.Process(target=ready.put, args=("w1",), name="w1")]
    for p in procs:
        p.start()
    bench._wait_for_start(procs, ready)  # returns, instead of waiting for ever on w0
    for p in procs:
        p.join()
    assert "worker w0 died before the start (exit 3)" in capsys.readouterr().out
