"""One way to write a file whole or not at all (fer_optuna/training/files.py), used by every writer."""
import pytest

from fer_optuna.training.files import PartialFile


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

