"""The README and docs/ cannot drift from the product: every `fer-opt` command and flag they show
exists, every link between them resolves, and the README's Python example runs."""

import ast
import re
import subprocess
import sys

import click
import pytest

from conftest import ROOT
from fer_optuna.cli import main

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# `fer-opt` then its words, up to the end of the command: a backtick, a comment, a pipe, `&&` or `;`.
COMMAND = re.compile(r"fer-opt((?: +(?!#|&&|\|)[^\s`;|]+)*)")


def commands(text: str) -> list[list[str]]:
    return [m.group(1).split() for m in COMMAND.finditer(text)]


def resolve(words: list[str]) -> tuple[click.Command, list[str]]:
    """The (sub)command the words name, and the words after it."""
    command = main
    while words and isinstance(command, click.Group) and not words[0].startswith("-"):
        assert words[0] in command.commands, f"fer-opt has no command {words[0]!r}"
        command, words = command.commands[words[0]], words[1:]
    return command, words


def flags(command: click.Command) -> set[str]:
    return {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)} | {"--help", "-h"}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_command_and_flag_in_the_docs_exists(page):
    found = commands(page.read_text())
    for words in found:
        command, rest = resolve(words)
        unknown = [w.split("=")[0] for w in rest if w.startswith("-") and w.split("=")[0] not in flags(command)]
        assert not unknown, f"{page.name}: `fer-opt {' '.join(words)}`: no such flag {unknown} on {command.name}"
    if page.name == "README.md":
        assert len(found) >= 10


def test_the_check_catches_what_does_not_exist():
    with pytest.raises(AssertionError, match="no command 'trian'"):
        resolve(["trian", "--data", "x"])
    command, rest = resolve(["storage", "copy", "--from", "a"])
    assert command.name == "copy" and "--from" in flags(command) and "--form" not in flags(command)
    assert commands("run `fer-opt worker --gpu 0` then | fer-opt status # a comment") == [["worker", "--gpu", "0"], ["status"]]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_between_the_pages_resolve(page):
    for target, anchor in re.findall(r"\]\(((?!https?:)[^)#]+)(?:#([^)]+))?\)", page.read_text()):
        linked = (page.parent / target).resolve()
        assert linked.exists(), f"{page.name} links to {target}, which does not exist"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", linked.read_text(), flags=re.M)
            slugs = {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}
            assert anchor in slugs, f"{page.name} links to {target}#{anchor}: no such heading"


def long_cells(text: str, limit: int = 220) -> list[str]:
    """The cells of the page's markdown tables longer than `limit` characters."""
    rows = [line.strip() for line in text.splitlines() if line.lstrip().startswith("|")]
    return [cell.strip() for row in rows for cell in re.split(r"(?<!\\)\|", row.strip("|")) if len(cell.strip()) > limit]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_table_cell_runs_past_220_characters(page):
    assert not long_cells(page.read_text()), f"{page.name}: split these cells: {long_cells(page.read_text())}"


def test_the_cell_check_catches_a_long_cell():
    assert long_cells("| a | b |\n| --- | --- |\n| x | " + "y" * 221 + " |\n") == ["y" * 221]
    assert long_cells("| x | " + "y" * 220 + " | `a \\| b` |\n") == []


def test_no_page_points_at_the_developers_shared_folder():
    for page in PAGES:
        assert "../shared" not in page.read_text(), page.name


def test_the_readme_python_example_runs(tmp_path):
    from group_photos import PHOTOS, moving_faces_clip

    [example] = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    (tmp_path / "photo.jpg").write_bytes((PHOTOS / "obama3.jpg").read_bytes())
    moving_faces_clip(tmp_path / "clip.mp4", frames=30)
    out = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    photo, *frames = out.stdout.splitlines()
    box, emotion, probability = re.fullmatch(r"(\(.*\)) (\w+) ([\d.]+)", photo).groups()
    # The photo is the smiling portrait (tests/photos/obama3.jpg): the bundled model says so, at 0.61.
    assert len(ast.literal_eval(box)) == 4 and emotion == "Happy" and 0.5 < float(probability) < 0.8
    assert len(frames) == 6  # 30 frames, every 5th
    for line in frames:
        seconds, faces = line.split(" ", 1)
        assert float(seconds) >= 0 and {face_id for face_id, _ in ast.literal_eval(faces)} == {1, 2}
