"""The study files that ship in the package (fer_optuna/studies/; the repository's studies/ links to
them): found by name, so that `fer-opt run` and `create-study --config fer2013-cnn3` work after
`pip install`, from any folder."""

from __future__ import annotations

from pathlib import Path

import yaml

from fer_optuna.errors import FerOptError

SHIPPED = Path(__file__).resolve().parent.parent / "studies"


def find(name_or_path: str | Path) -> Path:
    """A study file: the path, if it is a file; else the shipped study of that name (.yaml optional)."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    shipped = SHIPPED / (path.name if path.suffix == ".yaml" else f"{path.name}.yaml")
    if len(path.parts) == 1 and shipped.is_file():
        return shipped
    raise FerOptError(f"{name_or_path}: no such study file, nor a shipped study (those are: {', '.join(names())})")


def names() -> list[str]:
    return sorted(p.stem for p in SHIPPED.glob("*.yaml"))


def listing() -> list[tuple[str, str]]:
    """(name, description) of each shipped study file."""
    return [(name, yaml.safe_load((SHIPPED / f"{name}.yaml").read_text()).get("description", "")) for name in names()]
