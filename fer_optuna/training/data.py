"""FER2013 from any of its editions, parsed once and cached.

Sources: the Kaggle challenge CSV (`emotion,pixels,Usage`; plain, .gz, .xz, .bz2,
.zip or the challenge's fer2013.tar.gz), image-folder trees (`train/<class>/*.jpg`,
`test/<class>/...`) and prepared `.npz` / `.npz.xz` files. Every source becomes a
`FerData`: uint8 images (N, 48, 48) and int64 labels per split.

Parsing the full CSV takes seconds, so the result is cached under a key made
from the source's content; later runs and many worker processes load the cache
in a fraction of a second. Any bad input raises `FerOptError` naming the file
and the row or path; nothing is cached from a bad source.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from fer_optuna.errors import FerOptError
from fer_optuna.options import DataOptions
from . import votes as fer_votes
from .files import PartialFile
from .streams import open_payload

CLASSES = ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral")
SIDE = 48
SPLITS = ("train", "val", "test")
USAGE_TO_SPLIT = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
USAGE_CODE = {u: i for i, u in enumerate(USAGE_TO_SPLIT)}
FOLDER_TO_SPLIT = {"train": "train", "training": "train", "val": "val", "validation": "val",
                   "publictest": "val", "test": "test", "privatetest": "test"}
# The image files read (with Pillow): a dataset's class folders, and photos to find faces in.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm")
# Bump when parsing changes, so that old caches are not reused.
CACHE_VERSION = 2
VAL_FRACTION = 0.1
# A valid row is under 10 kB (2304 values of at most 3 digits); anything far
# longer is a broken or hostile file, refused before it is parsed.
MAX_LINE_BYTES = 64 * 1024
CSV_BLOCK_BYTES = 4 << 20  # about 500 rows: the parser's working memory is a few times this
WHITESPACE = np.frombuffer(b" \t\r\n", np.uint8)
MAX_IMAGE_PIXELS = 4096 * 4096


@dataclass(frozen=True)
class FerData:
    images: dict[str, np.ndarray]  # split -> uint8 (N, 48, 48)
    labels: dict[str, np.ndarray]  # split -> int64 (N,)
    source: str
    notes: tuple[str, ...] = ()
    cache_file: str = ""  # where the parsed arrays are cached ("" when not cached)
    classes: tuple[str, ...] = CLASSES  # label k names classes[k]
    # With FER+ votes, the train split's targets before a training target picks its rows (for_target):
    # "majority" (bool: the face has a majority label) and "distribution" (float32 (N, classes)).
    votes: dict[str, np.ndarray] = field(default_factory=dict)
    soft: np.ndarray | None = None  # float32 (N_train, classes): the train split's soft targets, if any
    # Each row's Usage (USAGE_CODE) in the source's order, which FER+ votes are matched against; None for a folder
    # (it has no row order) and once votes have relabelled the rows.
    usage: np.ndarray | None = None

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if name not in self.images:
            have = ", ".join(s for s in SPLITS if s in self.images)
            hint = {
                "test": "the test split is PrivateTest; use a source that has it (the full Kaggle "
                "fer2013.csv, or an image folder with test/)",
                "val": "the val split is PublicTest",
            }.get(name, "")
            raise FerOptError(f"{self.source} has no '{name}' split (it has: {have}); {hint}".rstrip("; "))
        return self.images[name], self.labels[name]

    def counts(self) -> dict[str, np.ndarray]:
        return {s: np.bincount(self.labels[s], minlength=len(self.classes)) for s in SPLITS if s in self.labels}


# --------------------------------------------------------------------------- CSV


def _parse_csv(stream: BinaryIO, name: str) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """The Kaggle CSV, read a block of rows at a time by pandas' C parser, so that memory stays bounded
    (a few blocks and the images) whatever the file's size; every row is checked as strictly as one by one."""
    header_line = stream.readline(MAX_LINE_BYTES + 1).removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark
    if not header_line.strip() and not stream.peek(MAX_LINE_BYTES)[:MAX_LINE_BYTES].strip():
        raise FerOptError(f"{name}: the file is empty; expected a CSV with columns emotion,pixels,Usage")
    if len(header_line) > MAX_LINE_BYTES:
        raise FerOptError(f"{name}, line 1: over {MAX_LINE_BYTES} bytes long; a FER2013 row is under 10 kB")
    text = header_line.decode("utf-8", errors="replace").strip()
    header = [h.strip().strip('"').lower() for h in text.split(",")]
    if "emotion" not in header or "pixels" not in header:
        raise FerOptError(f"{name}, line 1: header is {text[:80]!r}; expected the columns emotion,pixels,Usage "
                          "(Usage may be absent)")
    rows = _CsvRows(name, header)
    line, carry = 2, b""
    while True:
        chunk = stream.read(CSV_BLOCK_BYTES)
        block, carry = carry + chunk, b""
        if chunk:  # keep the last, unfinished line for the next block
            cut = block.rfind(b"\n") + 1
            block, carry = block[:cut], block[cut:]
            if len(carry) > MAX_LINE_BYTES:
                unfinished = line + block.count(b"\n")
                raise FerOptError(f"{name}, line {unfinished}: over {MAX_LINE_BYTES} bytes long; a FER2013 row is under 10 kB")
        if block:
            line = rows.add(block, line)
        if not chunk:
            break
    return rows.splits()


def _per_line(mask: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """How many of the marked bytes fall in each line (the lines end at `ends`)."""
    marked = np.concatenate(([0], np.cumsum(mask)))
    return np.diff(marked[ends], prepend=0)


class _CsvRows:
    """The rows parsed so far, block by block, with the file's line numbers for every message."""

    def __init__(self, name: str, header: list[str]):
        self.name, self.header = name, header
        self.col = {h: i for i, h in enumerate(header)}
        self.images: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.usages: list[np.ndarray] = []

    def fail(self, line: int, what: str) -> FerOptError:
        return FerOptError(f"{self.name}, line {line}: {what}")

    def add(self, block: bytes, first_line: int) -> int:
        """Parse the whole lines in `block`, the first of which is line `first_line`; returns the next line's number."""
        import pandas as pd

        buf = np.frombuffer(block, np.uint8)
        ends = np.flatnonzero(buf == 10)
        if not len(ends) or ends[-1] != len(buf) - 1:  # the file's last line, without a newline
            ends = np.append(ends, len(buf))
        starts = np.concatenate(([0], ends[:-1] + 1))
        lines = first_line + np.arange(len(ends))
        long = np.flatnonzero(ends - starts + 1 > MAX_LINE_BYTES)
        if len(long):
            k = long[0]
            raise self.fail(lines[k], f"{ends[k] - starts[k] + 1} bytes long; a FER2013 row is under 10 kB")
        blank = _per_line(~np.isin(buf, WHITESPACE), ends) == 0
        fields = _per_line(buf == ord(","), ends) + 1
        wrong = np.flatnonzero(~blank & (fields != len(self.header)))
        if len(wrong):
            k = wrong[0]
            raise self.fail(lines[k], f"{fields[k]} fields, expected {len(self.header)} ({','.join(self.header)})")
        try:
            frame = pd.read_csv(io.BytesIO(block), header=None, names=range(len(self.header)), index_col=False,
                                dtype=str, keep_default_na=False, skip_blank_lines=False, engine="c",
                                encoding="utf-8", encoding_errors="replace")
        except (pd.errors.ParserError, ValueError) as e:
            where = re.search(r"(?:line|row) (\d+)", str(e))
            line = lines[0] + int(where.group(1)) if where else lines[0]
            raise self.fail(line, f"cannot be read as CSV ({str(e).strip().splitlines()[-1][:120]})") from None
        if len(frame) != len(lines):
            raise self.fail(lines[0], "a quoted field runs over several lines; a FER2013 row is one line")
        keep = ~blank
        frame, lines = frame[keep], lines[keep]
        if not len(frame):
            return first_line + len(ends)
        emotion = self.cell(frame, "emotion")
        digits = emotion.str.fullmatch("[0-9]{1,9}").to_numpy(bool)
        labels = np.where(digits, pd.to_numeric(emotion.where(digits, "99")), 99)
        usage = self.cell(frame, "usage") if "usage" in self.col else pd.Series("Training", index=frame.index)
        known = usage.isin(list(USAGE_TO_SPLIT)).to_numpy(bool)
        bad = np.flatnonzero((labels >= len(CLASSES)) | ~known)
        if len(bad):
            k = bad[0]
            if labels[k] >= len(CLASSES):
                raise self.fail(lines[k], f"emotion is {emotion.iloc[k]!r}; expected an integer 0-6")
            raise self.fail(lines[k], f"Usage is {usage.iloc[k]!r}; expected Training, PublicTest or PrivateTest")
        self.images.append(_parse_pixels(self.cell(frame, "pixels").tolist(), lines, self.name))
        self.labels.append(labels.astype(np.int64))
        self.usages.append(usage.map(USAGE_CODE).to_numpy(np.uint8))
        return first_line + len(ends)

    def cell(self, frame, column: str):
        return frame[self.col[column]].str.strip().str.strip('"')

    def splits(self) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], np.ndarray]:
        if not self.labels:
            raise FerOptError(f"{self.name}: has a header but no data rows")
        images, labels, usage = (np.concatenate(a) for a in (self.images, self.labels, self.usages))
        self.images.clear()  # one copy of the images at a time
        return _by_usage(images, labels, usage), usage


def _by_usage(images: np.ndarray, labels: np.ndarray, usage: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each split's rows, in the source's order; `usage` holds USAGE_CODE values."""
    return {USAGE_TO_SPLIT[u]: (images[usage == c], labels[usage == c]) for u, c in USAGE_CODE.items() if (usage == c).any()}


# Byte classes for the pixel parser: 0 a digit, 1 a separator, 2 anything else.
_BYTE_KIND = np.full(256, 2, np.uint8)
_BYTE_KIND[ord("0"):ord("9") + 1] = 0
_BYTE_KIND[[ord(" "), ord("\t"), ord("\n")]] = 1


def _parse_pixels(pixels: list[str], line_numbers: np.ndarray, name: str) -> np.ndarray:
    """Parse all rows' space-separated pixel strings at once, with numpy, not per value."""
    buf = np.frombuffer(("\n".join(pixels) + "\n").encode("utf-8", errors="replace"), np.uint8)
    kind = _BYTE_KIND[buf]
    row_ends = np.flatnonzero(buf == 10)

    def fail(pos: int, what: str):
        row = int(np.searchsorted(row_ends, pos))
        start = row_ends[row - 1] + 1 if row else 0
        text = bytes(buf[start:row_ends[row]]).decode(errors="replace")
        word_start = text.rfind(" ", 0, pos - start) + 1
        word = text[word_start:].split(" ", 1)[0]
        index = len(text[:word_start].split()) + 1
        raise FerOptError(f"{name}, line {line_numbers[row]}: pixel {index} is {word!r}; {what}")

    bad = np.flatnonzero(kind == 2)
    if len(bad):
        fail(int(bad[0]), "expected an integer 0-255")
    is_digit = kind == 0
    # The buffer starts a row and ends in a newline, so every token has a start and an end.
    starts = np.flatnonzero(is_digit[1:] & ~is_digit[:-1]) + 1
    if is_digit[0]:
        starts = np.concatenate(([0], starts))
    ends = np.flatnonzero(is_digit[:-1] & ~is_digit[1:]) + 1
    counts = np.diff(np.searchsorted(starts, np.concatenate(([0], row_ends))))
    wrong = np.flatnonzero(counts != SIDE * SIDE)
    if len(wrong):
        row = int(wrong[0])
        raise FerOptError(
            f"{name}, line {line_numbers[row]}: {counts[row]} pixel values; expected {SIDE * SIDE} (48x48)"
        )
    lengths = ends - starts
    long = np.flatnonzero(lengths > 3)
    if len(long):
        fail(int(starts[long[0]]), "expected an integer 0-255")
    values = buf[starts].astype(np.int16) - 48
    for k in (1, 2):
        values = np.where(lengths > k, values * 10 + buf[np.minimum(starts + k, len(buf) - 1)] - 48, values)
    over = np.flatnonzero(values > 255)
    if len(over):
        fail(int(starts[over[0]]), "expected an integer 0-255")
    return values.astype(np.uint8).reshape(len(pixels), SIDE, SIDE)


# --------------------------------------------------------------------------- npz


def _parse_npz(stream: BinaryIO, name: str) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], np.ndarray]:
    try:
        with np.load(stream, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise FerOptError(f"{name}: not a readable .npz file ({e})") from None
    missing = {"images", "labels", "usage"} - set(arrays)
    if missing:
        raise FerOptError(f"{name}: missing array(s) {', '.join(sorted(missing))}; expected images, labels, usage")
    images, labels, usage = arrays["images"], arrays["labels"], arrays["usage"].astype(str)
    n = len(images)
    if images.shape[1:] != (SIDE, SIDE) or len(labels) != n or len(usage) != n:
        raise FerOptError(
            f"{name}: images {images.shape}, labels {labels.shape}, usage {usage.shape}; expected "
            "(N, 48, 48), (N,), (N,)"
        )
    if images.dtype != np.uint8 and (images.min() < 0 or images.max() > 255):
        raise FerOptError(f"{name}: image values outside 0-255")
    bad = np.flatnonzero((labels < 0) | (labels >= len(CLASSES)))
    if len(bad):
        raise FerOptError(f"{name}, row {bad[0]}: label {labels[bad[0]]}; expected 0-6")
    unknown = np.flatnonzero(~np.isin(usage, list(USAGE_TO_SPLIT)))
    if len(unknown):
        raise FerOptError(
            f"{name}, row {unknown[0]}: usage {usage[unknown[0]]!r}; expected Training, PublicTest or PrivateTest"
        )
    codes = np.zeros(n, np.uint8)
    for u, c in USAGE_CODE.items():
        codes[usage == u] = c
    return _by_usage(images.astype(np.uint8, copy=False), labels.astype(np.int64, copy=False), codes), codes


# --------------------------------------------------------------------------- image folders


def read_image(path: Path, resize: bool) -> np.ndarray:
    """One image as uint8 (48, 48) grayscale; resized only if `resize`."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise FerOptError(f"{path}: {image.width}x{image.height} pixels is too large for a face crop")
            if image.size != (SIDE, SIDE):
                if not resize:
                    raise FerOptError(
                        f"{path}: image is {image.width}x{image.height}; expected 48x48 (load with resize=True to resize)",
                        flag="--resize")
                image = image.convert("L").resize((SIDE, SIDE), Image.Resampling.BILINEAR)
            return np.asarray(image.convert("L"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise FerOptError(f"{path}: cannot decode image ({e})") from None


def _folder_files(root: Path) -> tuple[dict[str, list[tuple[Path, int]]], tuple[str, ...]]:
    """Each split's (image, label) pairs and the class names: FER2013's seven when every class folder is one of
    them (any case), so that FER2013 models score the folder; else the folders' own names, sorted."""
    folders: dict[str, list[Path]] = {}
    for split_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        split = FOLDER_TO_SPLIT.get(split_dir.name.lower())
        if split is None:
            raise FerOptError(
                f"{split_dir}: unknown split folder; expected train/, test/ and optionally val/"
            )
        folders.setdefault(split, []).extend(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    classes = _folder_classes(root, folders)
    index = {c.lower(): i for i, c in enumerate(classes)}
    found: dict[str, list[tuple[Path, int]]] = {}
    for split, class_dirs in folders.items():
        for class_dir in sorted(class_dirs):
            files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            found.setdefault(split, []).extend((p, index[class_dir.name.lower()]) for p in files)
    if not any(found.values()):
        raise FerOptError(f"{root}: no images under <split>/<class>/; expected train/<class>/*.jpg and test/<class>/*.jpg")
    return found, classes


def _folder_classes(root: Path, folders: dict[str, list[Path]]) -> tuple[str, ...]:
    names = {split: {d.name.lower(): d.name for d in dirs} for split, dirs in folders.items()}
    if all(set(n) <= {c.lower() for c in CLASSES} for n in names.values()):
        return CLASSES
    splits = sorted(names, key=SPLITS.index)
    for split in splits[1:]:
        if set(names[split]) != set(names[splits[0]]):
            only = [f"only {a}/ has {', '.join(names[a][k] for k in sorted(set(names[a]) - set(names[b])))}"
                    for a, b in ((splits[0], split), (split, splits[0])) if set(names[a]) - set(names[b])]
            raise FerOptError(f"{root}: the splits have different classes ({'; '.join(only)}); every split needs "
                              "the same class folders")
    classes = tuple(names[splits[0]][k] for k in sorted(names[splits[0]])) if splits else ()
    if len(classes) < 2:
        raise FerOptError(f"{root}: {len(classes)} class folder(s) ({', '.join(classes)}); a classifier needs two "
                          "classes or more, one folder each under every split")
    return classes


def _parse_folder(files: dict[str, list[tuple[Path, int]]], resize: bool):
    return {
        split: (
            np.stack([read_image(p, resize) for p, _ in entries]),
            np.array([label for _, label in entries], np.int64),
        )
        for split, entries in files.items()
        if entries
    }


# --------------------------------------------------------------------------- splits


def stratified_indices(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A seeded, stratified selection of about `fraction` of the rows, sorted."""
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        k = max(1, round(len(rows) * fraction)) if len(rows) > 1 else 0
        picked.append(rng.choice(rows, size=k, replace=False))
    return np.sort(np.concatenate(picked))


def _carve_val(data: FerData, seed: int = 0) -> FerData:
    """Without a val split, a stratified part of train becomes one; after the votes, so that its faces have a
    majority label, as in any val split (with votes, train keeps the faces that have only a distribution)."""
    if "val" in data.images or "train" not in data.images:
        return data
    images, labels = data.split("train")
    rows = np.flatnonzero(data.votes["majority"]) if data.votes else np.arange(len(labels))
    val = rows[stratified_indices(labels[rows], VAL_FRACTION, seed)]
    train = np.setdiff1d(np.arange(len(labels)), val)
    note = f"no val split in the source: carved a stratified {VAL_FRACTION:.0%} of train as val (seed {seed})"
    return dataclasses.replace(
        data, images={**data.images, "train": images[train], "val": images[val]},
        labels={**data.labels, "train": labels[train], "val": labels[val]},
        votes={k: v[train] for k, v in data.votes.items()}, notes=data.notes + (note,))


# --------------------------------------------------------------------------- cache


def _source_key(path: Path, files: dict | None, resize: bool) -> str:
    digest = hashlib.sha256(f"v{CACHE_VERSION} resize={resize}\n".encode())
    if files is None:
        with open(path, "rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
    else:
        # An image tree is keyed by its listing: names, labels, sizes and mtimes.
        for split, entries in sorted(files.items()):
            for p, label in entries:
                st = p.stat()
                digest.update(f"{split}/{label}/{p.relative_to(path)}/{st.st_size}/{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def _save_cache(target: Path, data: FerData) -> None:
    arrays = {f"{s}_images": data.images[s] for s in data.images}
    arrays |= {f"{s}_labels": data.labels[s] for s in data.labels}
    arrays["classes"] = np.array(data.classes, dtype=str)
    if data.usage is not None:
        arrays["usage"] = data.usage
    # Two processes building the same cache both end with a whole one.
    with PartialFile(target) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def _load_cache(target: Path, source: str) -> FerData | None:
    try:
        with np.load(target, allow_pickle=False) as archive:
            images = {s: archive[f"{s}_images"] for s in SPLITS if f"{s}_images" in archive.files}
            labels = {s: archive[f"{s}_labels"] for s in SPLITS if f"{s}_labels" in archive.files}
            classes = tuple(str(c) for c in archive["classes"])
            usage = archive["usage"] if "usage" in archive.files else None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None  # unreadable cache: rebuilt from the source
    return FerData(images, labels, source, cache_file=str(target), classes=classes, usage=usage)


def cache_path(path: str | Path, resize: bool = False, options: DataOptions | None = None) -> Path:
    path = _check_exists(path)
    return _cache_file(path, _folder_files(path)[0] if path.is_dir() else None, resize, (options or DataOptions()).cache_dir)


def _cache_file(path: Path, files: dict | None, resize: bool, cache_dir: Path) -> Path:
    return cache_dir / f"{_source_key(path, files, resize)}.npz"


def _check_exists(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise FerOptError(
            f"{path}: no such file or folder; give the Kaggle fer2013.csv (or .csv.gz/.zip/.tar.gz), "
            "an image folder with train/ and test/, or a prepared .npz"
        )
    return path


def load(path: str | Path, resize: bool = False, use_cache: bool = True, options: DataOptions | None = None,
         labels: str | Path | None = None) -> FerData:
    """Load FER2013 from `path`, from the cache (options.cache_dir) when the same content was parsed before;
    `labels`: FER+ votes for the same rows (votes.py), which replace the source's labels."""
    options = options or DataOptions()
    if labels and Path(path).expanduser().is_dir():
        raise FerOptError(f"{path}: an image folder has no row order for FER+ votes to follow; give the votes with "
                          "the Kaggle fer2013.csv (or a prepared .npz) as the data", flag="--labels")
    votes = fer_votes.read(labels, options.max_input_bytes) if labels else None
    data = _load_pixels(path, resize, use_cache, options)
    # Only training needs Training rows (FerData.split says so); evaluating a test-only file must work.
    return _carve_val(with_votes(data, votes) if votes else data)


def classes_of(path: str | Path, labels: str | Path | None = None, options: DataOptions | None = None) -> tuple[str, ...]:
    """The classes `load(path, labels=labels)` gives, without reading the pixels: the votes' (their header), an
    image folder's (its class folders), else FER2013's seven."""
    if labels:
        return fer_votes.read(labels, (options or DataOptions()).max_input_bytes).classes
    path = Path(path).expanduser()
    return _folder_files(path)[1] if path.is_dir() else CLASSES


def _load_pixels(path: str | Path, resize: bool, use_cache: bool, options: DataOptions) -> FerData:
    path = _check_exists(path)
    files, classes = _folder_files(path) if path.is_dir() else (None, CLASSES)
    if path.is_file() and path.stat().st_size == 0:
        raise FerOptError(f"{path}: the file is empty; expected a CSV with columns emotion,pixels,Usage")
    target = _cache_file(path, files, resize, options.cache_dir)
    if use_cache and target.exists():
        cached = _load_cache(target, str(path))
        if cached is not None:
            return cached
    if files is not None:
        splits, usage = _parse_folder(files, resize), None
    else:
        with open_payload(path, options.max_input_bytes) as (kind, stream, name):
            splits, usage = _parse_npz(stream, name) if kind == "npz" else _parse_csv(stream, name)
    data = FerData({s: v[0] for s, v in splits.items()}, {s: v[1] for s, v in splits.items()}, str(path),
                   classes=classes, usage=usage)
    if use_cache:
        try:
            _save_cache(target, data)
            data = dataclasses.replace(data, cache_file=str(target))
        except OSError:
            pass  # a read-only or full cache folder only costs speed
    return data


# --------------------------------------------------------------------------- FER+ votes


def with_votes(data: FerData, votes: fer_votes.Votes) -> FerData:
    """The pixels labelled by FER+ votes, row i by row i: val and test keep the faces with a majority label;
    train keeps every face with a target (see for_target)."""
    _check_order(data, votes)
    splits = {}
    for usage, split in USAGE_TO_SPLIT.items():
        rows = np.flatnonzero(votes.usage == usage)
        if split in data.labels:
            counts, named = votes.counts[rows], votes.named[rows]
            majority, dist = fer_votes.majority(counts), fer_votes.distribution(counts)
            keep = named & ((dist.sum(1) > 0) if split == "train" else (majority >= 0))
            labels = np.where(majority >= 0, majority, dist.argmax(1))[keep]
            splits[split] = (data.images[split][keep], labels, majority[keep] >= 0, dist[keep])
    train = splits.get("train")
    faces = [f"{s} {len(v[1])}" for s, v in splits.items() if s != "train"]
    if train:
        faces.insert(0, f"train {int(train[2].sum())} (with the distribution target {len(train[1])})")
    note = f"labels: the FER+ votes in {votes.source}; faces with a label: {', '.join(faces)}"
    return dataclasses.replace(
        data, images={s: v[0] for s, v in splits.items()}, labels={s: v[1] for s, v in splits.items()},
        notes=data.notes + (note,), classes=votes.classes, usage=None,
        votes={"majority": train[2], "distribution": train[3]} if train else {})


def _check_order(data: FerData, votes: fer_votes.Votes) -> None:
    """Row by row, the data's Usage is the votes' Usage, over the splits the data has (a copy may lack some):
    the votes are matched to the rows by position, so a copy in another order would give faces others' votes."""
    assert data.usage is not None, "votes are matched to a source's rows before anything changes them"
    codes = np.array([USAGE_CODE[u] for u in votes.usage], np.uint8)
    mine = np.isin(codes, data.usage)
    theirs, lines, ours = codes[mine], votes.lines[mine], data.usage
    n = min(len(theirs), len(ours))
    differ = np.flatnonzero(theirs[:n] != ours[:n])
    if not len(differ) and len(theirs) == len(ours):
        return
    names, k = list(USAGE_CODE), differ[0] if len(differ) else n
    kinds = ", ".join(u for u, c in USAGE_CODE.items() if c in ours)
    if k == len(ours):
        what = f"has {len(ours)} rows, but {votes.source} goes on with {kinds} rows (line {lines[k]})"
    elif k == len(theirs):
        what = f"row {k + 1} is {names[ours[k]]}, but {votes.source} has only {len(theirs)} rows of {kinds}"
    else:
        what = (f"row {k + 1} is {names[ours[k]]}, but the votes for it ({votes.source}, line {lines[k]}, its row "
                f"{k + 1} of {kinds}) are for a {names[theirs[k]]} row")
    raise FerOptError(f"{data.source}: {what}; the votes label the rows by position, so give the data in the "
                      "original row order of fer2013.csv, as Kaggle ships it", flag="--labels")


def for_target(data: FerData, target: str) -> FerData:
    """The train split for a training target: `majority`, the faces with a majority label; `distribution`, every
    face the votes give a distribution, as soft targets. Data without votes has majority labels only."""
    if not data.votes:
        if target == "distribution":
            raise FerOptError(f"{data.source}: the distribution target needs vote counts; give FER+'s votes "
                              "(fer2013new.csv) as the labels, or train with target: majority", flag="--labels")
        return data
    keep = data.votes["majority"] if target == "majority" else np.ones(len(data.labels["train"]), bool)
    return dataclasses.replace(
        data, images={**data.images, "train": data.images["train"][keep]},
        labels={**data.labels, "train": data.labels["train"][keep]}, votes={},
        soft=data.votes["distribution"][keep] if target == "distribution" else None)
