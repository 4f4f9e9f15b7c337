import bz2
import gzip
import lzma
import multiprocessing
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import fer_opt, synthetic_rows, write_csv
from fer_optuna.training import data
from fer_optuna.errors import FerOptError
from fer_optuna.options import DataOptions


def test_sample_csv_parses_to_the_documented_counts(sample_csv):
    d = data.load(sample_csv)
    assert d.images["train"].shape == (350, 48, 48) and d.images["train"].dtype == np.uint8
    assert len(d.labels["val"]) == 150 and "test" not in d.images
    assert d.counts()["train"].tolist() == [44, 2, 55, 91, 54, 42, 62]


def test_csv_with_all_three_usages_maps_to_train_val_test(three_split_csv):
    d = data.load(three_split_csv)
    assert {s: len(d.labels[s]) for s in data.SPLITS} == {"train": 21, "val": 14, "test": 7}
    first = np.array(three_split_csv.read_text().splitlines()[1].split(",")[1].split(), np.uint8).reshape(48, 48)
    assert (d.images["train"][0] == first).all()


@pytest.mark.parametrize("kind", ["gz", "xz", "bz2", "zip", "tar.gz"])
def test_compressed_and_archived_csv_give_the_same_arrays(three_split_csv, tmp_path, kind):
    raw = three_split_csv.read_bytes()
    target = tmp_path / f"fer2013.csv.{kind}"
    if kind in ("gz", "xz", "bz2"):
        target.write_bytes({"gz": gzip.compress, "xz": lzma.compress, "bz2": bz2.compress}[kind](raw))
    elif kind == "zip":
        with zipfile.ZipFile(target, "w") as z:
            z.writestr("fer2013.csv", raw)
    else:  # the challenge's fer2013.tar.gz: fer2013/fer2013.csv plus a README
        (tmp_path / "fer2013").mkdir()
        shutil.copy(three_split_csv, tmp_path / "fer2013" / "fer2013.csv")
        (tmp_path / "fer2013" / "README").write_text("readme")
        with tarfile.open(target, "w:gz") as t:
            t.add(tmp_path / "fer2013", arcname="fer2013")
    plain, packed = data.load(three_split_csv), data.load(target)
    for split in data.SPLITS:
        assert (plain.images[split] == packed.images[split]).all()
        assert (plain.labels[split] == packed.labels[split]).all()


@pytest.mark.parametrize("variant", ["quoted", "crlf", "no_final_newline", "bom", "whitespace", "blank_lines",
                                     "header_case", "no_usage"])
def test_csv_variants_people_write_read_the_same(three_split_csv, tmp_path, variant):
    header, *rows = three_split_csv.read_text().splitlines()
    if variant == "no_usage":  # a Training-only file without the column
        rows = [r.rsplit(",", 1)[0] for r in rows if r.endswith(",Training")]
        header = "emotion,pixels"
    edit = {
        "quoted": lambda r: '{},"{}",{}'.format(*r.split(",")),  # as pandas' to_csv(quoting=ALL) writes it
        "whitespace": lambda r: " {} , {} ,  {} ".format(*r.split(",")),
    }.get(variant, lambda r: r)
    rows = [edit(r) for r in rows]
    if variant == "quoted":
        header = '"emotion","pixels","Usage"'
    if variant == "header_case":
        header = "Emotion, Pixels ,USAGE"
    if variant == "blank_lines":
        rows = ["", *rows[:5], "   ", *rows[5:], "", ""]
    newline = "\r\n" if variant == "crlf" else "\n"
    text = newline.join([header, *rows]) + ("" if variant == "no_final_newline" else newline)
    path = tmp_path / f"{variant}.csv"
    path.write_bytes((b"\xef\xbb\xbf" if variant == "bom" else b"") + text.encode())
    plain, other = data.load(three_split_csv), data.load(path)
    if variant == "no_usage":  # all Training: a val split is carved from it, and says so
        assert len(other.labels["train"]) + len(other.labels["val"]) == 21 and "carved" in other.notes[0]
        return
    for split in data.SPLITS:
        assert (plain.images[split] == other.images[split]).all() and (plain.labels[split] == other.labels[split]).all()


def test_rows_spanning_parse_blocks_keep_their_line_numbers(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "CSV_BLOCK_BYTES", 20_000)  # a block ends in the middle of every third row
    rows = synthetic_rows({"Training": 40, "PublicTest": 7})
    path = write_csv(tmp_path / "many.csv", rows)
    loaded = data.load(path, use_cache=False)
    assert len(loaded.labels["train"]) == 40 and len(loaded.labels["val"]) == 7
    rows[29] = rows[29].replace(",Training", ",Validation")
    with pytest.raises(FerOptError, match=r"many\.csv, line 31: Usage is 'Validation'"):
        data.load(write_csv(tmp_path / "many.csv", rows), use_cache=False)


def test_archives_with_no_or_two_csvs_say_so(three_split_csv, tmp_path):
    for count in (0, 2):
        target = tmp_path / f"fer-{count}.tar.gz"
        with tarfile.open(target, "w:gz") as t:
            for i in range(count):
                t.add(three_split_csv, arcname=f"fer2013/part{i}.csv")
            t.add(three_split_csv, arcname="fer2013/README")
        with pytest.raises(FerOptError, match=f"expected one .csv file inside the tar archive, found {count}"):
            data.load(target)
    truncated = tmp_path / "cut.csv.gz"
    truncated.write_bytes(gzip.compress(three_split_csv.read_bytes())[:5000])
    with pytest.raises(FerOptError, match=r"cut\.csv\.gz: cannot decompress"):
        data.load(truncated)


def test_npz_and_npz_xz(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (10, 48, 48), dtype=np.uint8)
    labels = np.arange(10) % 7
    usage = np.array(["Training"] * 6 + ["PublicTest"] * 2 + ["PrivateTest"] * 2)
    np.savez(tmp_path / "f.npz", images=images, labels=labels, usage=usage)
    (tmp_path / "f.npz.xz").write_bytes(lzma.compress((tmp_path / "f.npz").read_bytes()))
    for name in ("f.npz", "f.npz.xz"):
        d = data.load(tmp_path / name)
        assert (d.images["test"] == images[8:]).all() and d.labels["val"].tolist() == [6, 0]


def _image_tree(root: Path, n: int = 10, size: int = 48, names=("Happy", "sad", "NEUTRAL")) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in names:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return root


def test_image_folder_case_insensitive_classes_and_carved_val(tmp_path):
    d = data.load(_image_tree(tmp_path / "tree"))
    assert len(d.labels["test"]) == 30
    assert len(d.labels["val"]) == 3 and len(d.labels["train"]) == 27  # a stratified 10%
    assert set(d.labels["val"].tolist()) == {3, 4, 6}
    assert any("carved" in note for note in d.notes)
    again = data.load(tmp_path / "tree")
    assert (again.labels["val"] == d.labels["val"]).all(), "the carve must be seeded"


def test_image_folder_resizes_only_when_asked(tmp_path):
    root = _image_tree(tmp_path / "tree", n=2, size=64)
    with pytest.raises(FerOptError, match=r"is 64x64; expected 48x48 \(load with resize=True"):
        data.load(root)
    assert data.load(root, resize=True).images["train"].shape[1:] == (48, 48)


def test_cache_is_keyed_by_content_not_name(three_split_csv, tmp_path):
    data.load(three_split_csv)
    copy = tmp_path / "renamed.csv"
    shutil.copy(three_split_csv, copy)
    assert data.cache_path(copy) == data.cache_path(three_split_csv)
    write_csv(copy, synthetic_rows({"Training": 3}, seed=5))
    assert data.cache_path(copy) != data.cache_path(three_split_csv)
    assert len(data.load(copy).labels["train"]) == 3


def _load_counts(path):
    d = data.load(path)
    return {s: len(v) for s, v in d.labels.items()}


def test_processes_racing_to_build_the_cache_all_get_whole_data(tmp_path):
    path = write_csv(tmp_path / "race.csv", synthetic_rows({"Training": 300, "PublicTest": 50}, seed=3))
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        results = pool.map(_load_counts, [path] * 8)
    assert all(r == {"train": 300, "val": 50} for r in results)
    assert data.cache_path(path).exists()
    assert not list(data.cache_path(path).parent.glob("*.partial*"))


def _bad(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


GOOD = " ".join(["7"] * 2304)
BAD_CSVS = {
    "empty": ("", r"empty\.csv: the file is empty"),
    "header_only": ("emotion,pixels,Usage\n", r"no data rows"),
    "wrong_columns": ("label,image\n0,1 2 3\n", r"line 1: header is .*expected the columns emotion,pixels,Usage"),
    "field_count": (f"emotion,pixels,Usage\n0,{GOOD},Training,extra\n", r"line 2: 4 fields, expected 3"),
    "pixel_count": (f"emotion,pixels,Usage\n0,{GOOD},Training\n1,1 2 3,Training\n", r"line 3: 3 pixel values; expected 2304"),
    "non_numeric": (f"emotion,pixels,Usage\n0,{GOOD.replace('7', 'x', 1)},Training\n", r"line 2: pixel 1 is 'x'"),
    "out_of_range": (f"emotion,pixels,Usage\n0,7 300 {GOOD[4:]},Training\n", r"line 2: pixel 2 is '300'; expected an integer 0-255"),
    "negative": (f"emotion,pixels,Usage\n0,7 -4 {GOOD[4:]},Training\n", r"line 2: pixel 2 is '-4'"),
    "label": (f"emotion,pixels,Usage\n9,{GOOD},Training\n", r"line 2: emotion is '9'; expected an integer 0-6"),
    "usage": (f"emotion,pixels,Usage\n0,{GOOD},Validation\n", r"line 2: Usage is 'Validation'; expected Training, PublicTest or PrivateTest"),
    "long_line": ("emotion,pixels,Usage\n0," + "1 " * 40000 + ",Training\n", r"line 2: \d+ bytes long"),
}


@pytest.mark.parametrize("case", sorted(BAD_CSVS))
def test_bad_csv_is_refused_with_file_and_line(tmp_path, case):
    text, message = BAD_CSVS[case]
    path = _bad(tmp_path, f"{case}.csv", text)
    with pytest.raises(FerOptError, match=message) as err:
        data.load(path)
    assert str(path) in str(err.value)
    if case != "empty":
        assert not data.cache_path(path).exists(), "nothing may be cached from a bad source"


def test_bad_input_on_the_cli_is_one_line_and_exit_2(tmp_path):
    path = _bad(tmp_path, "bad.csv", BAD_CSVS["label"][0])
    proc = fer_opt("data", "inspect", path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "line 2: emotion is '9'" in proc.stderr
    missing = fer_opt("data", "inspect", tmp_path / "nope.csv", check=False)
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_undecodable_and_unknown_class_images(tmp_path):
    root = _image_tree(tmp_path / "tree", n=1)
    (root / "train" / "Happy" / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(FerOptError, match=r"broken\.jpg: cannot decode image"):
        data.load(root)
    root2 = _image_tree(tmp_path / "tree2", n=1)
    (root2 / "train" / "contempt").mkdir()
    with pytest.raises(FerOptError, match=r"tree2: the splits have different classes \(only train/ has contempt\)"):
        data.load(root2)


def test_zip_bomb_is_refused_by_size(tmp_path):
    path = tmp_path / "bomb.csv.gz"
    path.write_bytes(gzip.compress(b"0" * (3 * 2**20)))
    with pytest.raises(FerOptError, match="decompresses to more than 1 MB") as err:
        data.load(path, options=DataOptions(max_input_mb=1))
    # In the library's terms; the CLI adds the variable (test_cli).
    assert str(err.value).endswith("(raise DataOptions.max_input_mb if it really is)") and "FER_OPT" not in str(err.value)
    assert err.value.setting == "DataOptions.max_input_mb"


def test_missing_test_split_says_so(sample_csv):
    with pytest.raises(FerOptError, match="has no 'test' split.*PrivateTest"):
        data.load(sample_csv).split("test")


def test_inspect_prints_the_table_and_cache(sample_csv):
    out = fer_opt("data", "inspect", sample_csv).stdout
    assert "train" in out and "350" in out and "Disgust" in out
    assert "cache:" in out and "no test split" in out
