"""The house's rule, as fer_optuna/*/__init__.py state it: the training core stands alone, the
search service and the model in use stand on it and never on each other, and nothing imports
the command line."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "fer_optuna"
WINGS = ("training", "search", "recognition")
TOP = {"cli", "pipeline", "errors", "interrupts", "options", "__init__"}
# what each part may not import (besides cli, which nothing imports)
FORBIDDEN = {
    "training": {"search", "recognition", "pipeline", "optuna"},
    "search": {"recognition", "pipeline"},
    "recognition": {"search", "pipeline", "optuna"},
    "top": set(),
}


def part(module: str) -> str:
    """'training' for fer_optuna.training.data, 'pipeline' for fer_optuna.pipeline, 'optuna' for optuna.x."""
    words = module.split(".")
    if words[0] != "fer_optuna":
        return words[0]
    return words[1] if len(words) > 1 else "fer_optuna"


def imports(path: Path, package: Path) -> list[str]:
    """Every module a file imports, top level or inside functions, relative ones made absolute."""
    here = ["fer_optuna", *path.relative_to(package).with_suffix("").parts][:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            # `from . import trainer` imports the module fer_optuna.<wing>.trainer
            found += [f"{module}.{alias.name}" for alias in node.names] if not node.module else [module]
    return found


def offences(package: Path = PACKAGE) -> list[str]:
    found = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package).with_suffix("").parts
        wing = rel[0] if len(rel) > 1 else "top"
        assert wing in WINGS or rel[0] in TOP, f"{path}: a module outside the three wings; add it to one"
        for module in imports(path, package):
            target = part(module)
            if target == "cli" or target in FORBIDDEN[wing]:
                found.append(f"{'/'.join(rel)}.py imports {module}")
    return found


def test_the_wings_import_only_what_the_house_allows():
    assert offences() == []


def test_the_rule_sees_a_crossing_import(tmp_path):
    # a copy of the package with one forbidden import, inside a function as the CLI's are
    for path in PACKAGE.rglob("*.py"):
        copy = tmp_path / path.relative_to(PACKAGE)
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_text(path.read_text())
    video = tmp_path / "recognition" / "video.py"
    video.write_text(video.read_text() + "\n\ndef _crossing():\n    from ..search import study\n")
    assert offences(tmp_path) == ["recognition/video.py imports fer_optuna.search"]
