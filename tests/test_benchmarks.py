"""benchmarks/gpu_check.sh runs only where a GPU is lent, rarely and for minutes: a wrong path or
flag in it wastes that session, so it is checked here, where every session can run it."""

import re
import subprocess
import sys

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
