"""One way to write a file whole or not at all (fer_optuna/training/files.py), used by every writer."""
import ast
from pathlib import Path

import pytest

from fer_optuna.training.files import PartialFile

PACKAGE = Path(__file__).resolve().parent.parent / "fer_optuna"


def test_a_whole_write_replaces_the_target_and_leaves_nothing_else(tmp_path):
    target = tmp_path / "deep" / "model.pt"
    with PartialFile(target) as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".pt" and tmp != target
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in target.parent.iterdir()] == ["model.pt"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_partial_one(tmp_path):
    target = tmp_path / "rows.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with PartialFile(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["rows.csv"]


def test_two_writers_of_one_target_never_share_a_temporary_name(tmp_path):
    assert PartialFile(tmp_path / "cache.npz").path != PartialFile(tmp_path / "cache.npz").path


def test_no_module_renames_files_into_place_but_the_helper():
    """The write-then-rename is written once: any other os.replace/os.rename is a second copy of it."""
    renames = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("replace", "rename") and \
                    isinstance(node.value, ast.Name) and node.value.id == "os":
                renames.append(str(path.relative_to(PACKAGE)))
    assert renames == ["training/files.py"]
