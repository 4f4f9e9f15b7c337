"""Each piece of logic is written once in the package, and the one copy does what its callers need."""
import ast
from dataclasses import dataclass
from pathlib import Path

import onnx
import pytest

from fer_optuna.recognition.video import FaceTracker
from fer_optuna.training import checkpoints, portable
from fer_optuna.training.config import TrainConfig
from fer_optuna.training.models import build_model

PACKAGE = Path(__file__).resolve().parent.parent / "fer_optuna"


def _where(found) -> list[str]:
    """The modules of the package in which found(node) holds for some node."""
    return sorted({str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                   for node in ast.walk(ast.parse(p.read_text())) if found(node)})


def _calls(module: str, name: str):
    return lambda node: (isinstance(node, ast.Attribute) and node.attr == name and
                         isinstance(node.value, ast.Name) and node.value.id == module)


def _defines(name: str):
    """A module-level constant of that name (a class's own SIDE is another thing)."""
    return lambda node: isinstance(node, ast.Module) and any(
        isinstance(a, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in a.targets) for a in node.body)


@pytest.mark.parametrize("what, found, homes", [
    ("a file renamed into place", _calls("os", "replace"), ["training/files.py"]),
    ("a model exported to ONNX", lambda n: isinstance(n, ast.Attribute) and n.attr == "export"
     and isinstance(n.value, ast.Attribute) and n.value.attr == "onnx", ["training/portable.py"]),
    ("a wait for a service to come back", _calls("retry", "retried"), ["search/artifacts.py", "search/storage.py"]),
    ("the side of a face crop", _defines("SIDE"), ["training/data.py"]),
    ("the image files read", _defines("IMAGE_SUFFIXES"), ["training/data.py"]),
    ("face ids set from a tracker", _calls("tracker", "update"), []),
])
def test_written_once(what, found, homes):
    assert _where(found) == homes, f"{what} is written in {_where(found)}; use the one in {homes or 'FaceTracker.label'}"


def test_costs_time_the_graph_that_export_writes(tmp_path):
    """The latency a search measures is that of the very graph `fer-opt export --onnx` ships (its metadata aside)."""
    cfg = TrainConfig(model="cnn3", hidden_dim=16, width=0.25)
    model = build_model(cfg.model, cfg.dropout, cfg.hidden_dim, cfg.width)
    checkpoints.save_checkpoint(tmp_path / "m.pt", model, cfg)
    portable.export_onnx(checkpoints.read_checkpoint(tmp_path / "m.pt"), tmp_path / "m.onnx")
    written = onnx.load(str(tmp_path / "m.onnx"))
    assert {p.key for p in written.metadata_props} >= {"fer_optuna.classes", "fer_optuna.config"}
    del written.metadata_props[:]
    measured = onnx.load_from_string(portable.onnx_bytes(model, cfg))
    assert written.SerializeToString() == measured.SerializeToString()


@dataclass(frozen=True)
class _Face:
    box: tuple[int, int, int, int]
    id: int | None = None


def test_the_tracker_keeps_ids_as_faces_move_swap_order_and_come_back():
    tracker = FaceTracker(patience=2)
    first = tracker.label([_Face((0, 0, 50, 50)), _Face((200, 0, 50, 50))])
    assert [f.id for f in first] == [1, 2]
    # listed in the other order and moved a little: each keeps its id
    assert [f.id for f in tracker.label([_Face((205, 5, 50, 50)), _Face((5, 5, 50, 50))])] == [2, 1]
    tracker.label([_Face((5, 5, 50, 50))])  # face 2 missed for a frame
    assert [f.id for f in tracker.label([_Face((210, 5, 50, 50)), _Face((600, 600, 40, 40))])] == [2, 3]
