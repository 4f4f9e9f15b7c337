"""FER+ label votes (Microsoft's FERPlus `fer2013new.csv`): ten annotators' counts per face.

Row i of the votes file labels row i of the pixel source. The rules are the FER+ reference
code's (src/ferplus.py): an emotion with a single vote is dropped as an outlier; the
majority label is the emotion with more than half of the remaining votes; the
`distribution` target keeps the top emotions (ties together) until they hold 3/4 of the
votes or there are 3 of them, and is refused when they hold half or less, when there
are over 3, or when unknown or not-a-face leads. Faces without a label (and rows without
an image name, which FER+ leaves out) are not used.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fer_optuna.errors import FerOptError
from .streams import open_payload

HEADER = ("usage", "image name", "neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear",
          "contempt", "unknown", "nf")
EMOTIONS = 8  # the columns after the first two: 8 emotions, then unknown and not-a-face
USAGES = ("Training", "PublicTest", "PrivateTest")


@dataclass(frozen=True)
class Votes:
    classes: tuple[str, ...]  # the emotions' names, from the header
    usage: np.ndarray  # str (N,)
    named: np.ndarray  # bool (N,): the row has an image name (FER+ leaves the others out)
    counts: np.ndarray  # int64 (N, 10)
    lines: np.ndarray  # int64 (N,): each row's line in the file
    source: str


def read(path: str | Path, limit: int) -> Votes:
    """The votes file (plain or compressed, as the pixel CSVs); any bad row is one FerOptError naming its line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FerOptError(f"{path}: no such votes file; give FER+'s fer2013new.csv", flag="--labels")
    with open_payload(path, limit) as (kind, stream, name):
        if kind == "npz":
            raise FerOptError(f"{name}: a votes file is a CSV (FER+'s fer2013new.csv), not an .npz", flag="--labels")
        reader = csv.reader(io.TextIOWrapper(stream, encoding="utf-8-sig", errors="replace", newline=""))
        header = next(reader, [])
        if tuple(h.strip().lower() for h in header) != HEADER:
            raise FerOptError(f"{name}, line 1: header is {','.join(header)[:100]!r}; expected FER+'s "
                              "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF")
        usage, named, counts, lines = [], [], [], []
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(HEADER):
                raise FerOptError(f"{name}, line {line}: {len(row)} fields, expected {len(HEADER)} ({','.join(header)})")
            if row[0].strip() not in USAGES:
                raise FerOptError(f"{name}, line {line}: Usage is {row[0]!r}; expected {', '.join(USAGES)}")
            cells = [c.strip() for c in row[2:]]
            bad = next((c for c in cells if not c.isdigit() or not c.isascii()), None)
            if bad is not None:
                raise FerOptError(f"{name}, line {line}: vote {bad!r}; the votes are counts (whole numbers, 0 or more)")
            usage.append(row[0].strip())
            named.append(bool(row[1].strip()))
            counts.append([int(c) for c in cells])
            lines.append(line)
    if not usage:
        raise FerOptError(f"{name}: has a header but no rows of votes")
    return Votes(tuple(h.strip() for h in header[2:2 + EMOTIONS]), np.array(usage), np.array(named),
                 np.array(counts, np.int64), np.array(lines, np.int64), name)


def majority(counts: np.ndarray) -> np.ndarray:
    """Each face's majority emotion, or -1 where it has none (or unknown / not-a-face has it)."""
    kept = np.where(counts > 1, counts, 0)
    top = kept.argmax(1)
    has = (kept.max(1) * 2 > kept.sum(1)) & (top < EMOTIONS)
    return np.where(has, top, -1)


def distribution(counts: np.ndarray) -> np.ndarray:
    """Each face's target distribution over the emotions (float32 (N, 8)); a zero row where the rules refuse one."""
    out = np.zeros((len(counts), EMOTIONS), np.float32)
    for i, row in enumerate(counts):
        out[i] = _distribution(np.where(row > 1, row, 0))
    return out


def _distribution(votes: np.ndarray) -> np.ndarray:
    """The reference code's 'probability' / 'crossentropy' target for one face (outlier votes already dropped)."""
    votes, total = votes.astype(float), float(votes.sum())
    taken = np.zeros_like(votes)
    part, count, valid = 0.0, 0, True
    while part < 0.75 * total and count < 3 and valid:
        top = votes.max()
        for i in np.flatnonzero(votes == top):
            taken[i], votes[i] = top, 0
            part += top
            count += 1
            if i >= EMOTIONS:  # unknown or not-a-face among the top: the loop ends here
                valid = False
                if taken.sum() > top:  # emotions came before it: it is left out
                    taken[i] = 0
                    count -= 1
                break
    if taken.sum() <= 0.5 * total or count > 3 or taken.argmax() >= EMOTIONS:
        return np.zeros(EMOTIONS, np.float32)
    return (taken[:EMOTIONS] / taken[:EMOTIONS].sum()).astype(np.float32)
