"""Property-based fuzzing: every input either loads or ends in FerOptError with a message; nothing else escapes."""

import collections
import os

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from fer_optuna.training import data
from fer_optuna.search import study as fer_study
from fer_optuna.errors import FerOptError

FUZZ = settings(max_examples=int(os.environ.get("FER_OPT_FUZZ_EXAMPLES", "150")), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
VALID = " ".join(["128"] * 2304)


def _loads_or_explains(path):
    try:
        loaded = data.load(path, use_cache=False)
    except FerOptError as e:
        assert str(e).strip(), "an error needs a message"
        return None
    for split in loaded.images:
        assert loaded.images[split].shape[1:] == (48, 48) and loaded.images[split].dtype == np.uint8
        assert ((loaded.labels[split] >= 0) & (loaded.labels[split] <= 6)).all()
    return loaded


pixel = st.one_of(st.integers(-5, 300).map(str), st.sampled_from(["", "x", "1.5", "٣", "0x1f", "  "]))
row = st.tuples(
    st.one_of(st.integers(-1, 8).map(str), st.text(max_size=3)),
    st.one_of(st.just(VALID), st.lists(pixel, min_size=0, max_size=30).map(" ".join),
              st.builds(lambda i, v: VALID[: i * 4] + v + VALID[i * 4 + 3:], st.integers(0, 2303), pixel)),
    st.sampled_from(["Training", "PublicTest", "PrivateTest", "Test", "", "training"]),
)


@FUZZ
@given(header=st.sampled_from(["emotion,pixels,Usage", "emotion,pixels", "pixels,emotion,Usage", "emotion;pixels", ""]),
       rows=st.lists(row, max_size=6), junk=st.binary(max_size=40), use_junk=st.booleans())
def test_csv_reader(tmp_path, header, rows, junk, use_junk):
    text = "\n".join([header] + [",".join(r) for r in rows]).encode()
    path = tmp_path / "fuzz.csv"
    path.write_bytes(junk + text if use_junk else text)
    loaded = _loads_or_explains(path)
    if loaded is not None:  # every row written is in it, with its label and pixels, in its split
        assert _rows_by_split(loaded) == _written_rows(path.read_bytes())


valid_row = st.tuples(st.integers(0, 6), st.integers(0, 2**32 - 1), st.sampled_from(list(data.USAGE_TO_SPLIT)),
                      st.sampled_from(["{}", '"{}"', " {} "]), st.sampled_from(["", "\n", "\n  \n"]))


@FUZZ
@given(rows=st.lists(valid_row, min_size=1, max_size=8), usage=st.booleans(), crlf=st.booleans())
def test_csv_reader_keeps_every_row_it_is_given(tmp_path, rows, usage, crlf):
    """Valid files, written in the ways real ones are (quoted cells, padding, blank lines, Windows line ends):
    every row comes back, in its split, with its label and pixels; none dropped, none added."""
    lines = ["emotion,pixels,Usage" if usage else "emotion,pixels"]
    for label, seed, split, cell, after in rows:
        pixels = " ".join(map(str, np.random.default_rng(seed).integers(0, 256, 2304)))
        lines.append(",".join([cell.format(label), cell.format(pixels), *([cell.format(split)] if usage else [])]) + after)
    path = tmp_path / "rows.csv"
    path.write_bytes(("\r\n" if crlf else "\n").join(lines).encode())
    loaded = _loads_or_explains(path)
    assert loaded is not None, "a valid file was refused"
    assert _rows_by_split(loaded) == _written_rows(path.read_bytes())
    assert sum(map(len, loaded.labels.values())) == len(rows)


def _written_rows(raw: bytes) -> dict[str, collections.Counter]:
    """What a file the reader accepted holds, read line by line the plain way: the rows of each split,
    as (label, pixels) with their multiplicity."""
    header, *lines = raw.removeprefix(b"\xef\xbb\xbf").decode("utf-8", errors="replace").split("\n")
    names = [h.strip().strip('"').lower() for h in header.split(",")]
    rows: dict[str, collections.Counter] = {}
    for line in lines:
        if not line.strip(" \t\r"):
            continue
        cells = {name: cell.strip().strip('"') for name, cell in zip(names, line.split(","))}
        pixels = np.array([int(v) for v in cells["pixels"].split()], np.uint8)
        split = data.USAGE_TO_SPLIT[cells.get("usage", "Training")]
        rows.setdefault(split, collections.Counter())[int(cells["emotion"]), pixels.tobytes()] += 1
    return rows


def _rows_by_split(loaded) -> dict[str, collections.Counter]:
    """The loaded rows as `_written_rows` gives them; a val split carved from train goes back into train."""
    splits = {name: collections.Counter(zip(loaded.labels[name].tolist(), (i.tobytes() for i in loaded.images[name])))
              for name in loaded.images}
    if loaded.notes:
        splits["train"] += splits.pop("val")
    return splits


@FUZZ
@given(payload=st.binary(max_size=200), wrapper=st.sampled_from(["gz", "xz", "zip", "npz", "raw"]))
def test_compressed_garbage(tmp_path, payload, wrapper):
    import gzip
    import lzma
    import zipfile

    path = tmp_path / "fuzz.bin"
    if wrapper == "gz":
        path.write_bytes(gzip.compress(payload)[: len(payload) // 2 + 10])
    elif wrapper == "xz":
        path.write_bytes(lzma.compress(payload))
    elif wrapper == "zip":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("a.csv", payload)
    elif wrapper == "npz":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("images.npy", payload)
    else:
        path.write_bytes(payload)
    _loads_or_explains(path)


@FUZZ
@given(files=st.lists(st.tuples(st.sampled_from(["train", "test", "val", "Train", "other"]),
                                st.sampled_from(["happy", "Sad", "FEAR", "contempt", ".hidden"]),
                                st.sampled_from(["png", "jpg", "txt"]),
                                st.sampled_from(["ok", "big", "rgb", "broken", "empty"])), min_size=1, max_size=6))
def test_image_folder_reader(tmp_path_factory, files):
    root = tmp_path_factory.mktemp("tree")
    for i, (split, cls, ext, kind) in enumerate(files):
        folder = root / split / cls
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{i}.{ext}"
        if kind == "broken":
            target.write_bytes(b"\x89PNG garbage")
        elif kind == "empty":
            target.write_bytes(b"")
        else:
            size = 64 if kind == "big" else 48
            mode = "RGB" if kind == "rgb" else "L"
            Image.new(mode, (size, size), color=(10, 20, 30) if mode == "RGB" else 40).save(
                target, format="PNG" if ext != "jpg" else "JPEG") if ext != "txt" else target.write_text("note")
    _loads_or_explains(root)


spec_value = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-3, 300), st.floats(-1, 2), st.just(float("nan")),
                                    st.text(max_size=6)),
                          lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                  st.dictionaries(st.sampled_from(["type", "low", "high", "log", "choices", "step", "x"]), inner, max_size=4)),
                          max_leaves=8)


@FUZZ
@given(mutation=st.dictionaries(st.sampled_from(["name", "n_trials", "train", "search_space", "sampler", "pruner", "enqueue", "bogus"]),
                                spec_value, max_size=3),
       param=st.sampled_from(["batch_size", "dropout", "lr", "model", "nope"]), param_value=spec_value)
def test_study_files(mutation, param, param_value):
    import yaml

    base = yaml.safe_load(open(os.path.join(os.path.dirname(__file__), "studies", "tiny.yaml")))
    base["search_space"][param] = param_value
    base.update(mutation)
    try:
        text = yaml.safe_dump(base)
    except yaml.YAMLError:
        return
    try:
        spec = fer_study.parse_spec(text, "fuzz.yaml")
    except FerOptError as e:
        assert str(e).strip()
        return
    assert spec.n_trials >= 1 and spec.space
