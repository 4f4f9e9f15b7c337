"""`fer-opt predict`: photos, folders, globs and videos in one call; rows to one CSV or JSON Lines file.

Outputs are written under temporary names and renamed when whole, so a bad input leaves
nothing half-written.
"""

from __future__ import annotations

import csv
import glob
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fer_optuna.errors import FerOptError
from fer_optuna.training.data import IMAGE_SUFFIXES
from fer_optuna.training.files import PartialFile
from .recognizer import FaceEmotion, Recognizer, annotated
from .video import VIDEO_SUFFIXES, AnnotatedVideo, VideoSource, plot_emotions

COLUMNS = ["source", "frame", "seconds", "face", "x", "y", "width", "height", "score", "emotion"]  # then the classes


@dataclass(frozen=True)
class PredictOptions:
    out: Path | None = None  # every face's row, .csv or .jsonl
    annotate_dir: Path | None = None  # boxed photos; annotated videos and their emotion plots
    as_json: bool = False  # one JSON object per photo (per sampled frame of a video) on stdout
    detect: bool = True
    every: int = 1
    rate: float | None = None


def expand(inputs: list[str | Path]) -> list[Path]:
    """Files as given, folders as the images and videos in them (sorted), and quoted globs; all checked first."""
    found: list[Path] = []
    for item in map(str, inputs):
        path = Path(item)
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES)
            if not inside:
                raise FerOptError(f"{path}: a folder without images or videos (looked for "
                                  f"{', '.join(IMAGE_SUFFIXES + VIDEO_SUFFIXES)})")
            found += inside
        elif not path.exists() and glob.has_magic(item):
            matched = sorted(Path(p) for p in glob.glob(item) if Path(p).is_file())
            if not matched:
                raise FerOptError(f"{item}: no file matches this pattern")
            found += matched
        elif not path.exists():
            raise FerOptError(f"{path}: no such image or video file")
        else:
            found.append(path)
    return found


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def _row(source: Path, frame: int | str, seconds: float | str, face: FaceEmotion, number: int) -> dict:
    x, y, w, h = face.box
    return {"source": str(source), "frame": frame, "seconds": seconds, "face": face.id or number, "x": x, "y": y,
            "width": w, "height": h, "score": round(face.score, 4), "emotion": face.emotion,
            **{c: round(v, 4) for c, v in face.probabilities.items()}}


class RowFile:
    """One CSV or JSON Lines file for every face of every input, renamed into place when whole."""

    def __init__(self, out: Path, classes: tuple[str, ...]):
        if out.suffix.lower() not in (".csv", ".jsonl"):
            raise FerOptError(f"{out}: expected a .csv or .jsonl file for the rows", flag="--out")
        self.partial = PartialFile(out)
        self.file = open(self.partial.path, "w", newline="")
        self.csv = csv.DictWriter(self.file, COLUMNS + list(classes)) if out.suffix.lower() == ".csv" else None
        if self.csv:
            self.csv.writeheader()
        self.rows = 0

    def add(self, row: dict) -> None:
        self.csv.writerow(row) if self.csv else self.file.write(json.dumps(row) + "\n")
        self.rows += 1

    def close(self, keep: bool) -> None:
        self.file.close()
        self.partial.close(keep)


def predict(recognizer: Recognizer, inputs: list[str | Path], opts: PredictOptions, echo: Callable[[str], None],
            progress: bool = True) -> int:
    """Every face of every input: a line (or a JSON object) each on `echo`, rows to opts.out. Returns the faces found."""
    paths = expand(inputs)
    rows = RowFile(opts.out, recognizer.classes) if opts.out else None
    total = 0
    try:
        for path in paths:
            total += (_video if is_video(path) else _photo)(recognizer, path, opts, rows, echo, progress)
    except BaseException:
        if rows:
            rows.close(keep=False)
        raise
    if rows:
        rows.close(keep=True)
        echo(f"wrote {rows.rows} rows to {opts.out}")
    return total


def _looked_for(recognizer: Recognizer, shape) -> tuple[dict, str]:
    """What the detector looked for in a picture of this shape, for JSON and in words: a user who
    gets no face learns which faces were too small to be found and how to look for them."""
    smallest = recognizer.smallest_face(tuple(shape[:2]))
    return ({"detector": recognizer.detector_name, "smallest_face": smallest},
            f"{recognizer.detector_name} looked for faces {smallest} px across or larger")


def _none_found(looked: str, smallest: int) -> str:
    return (f"no face found; {looked}: for smaller faces pass --min-face {max(4, smallest // 2)}, "
            "for a picture that is one face --no-detect")


def _photo(recognizer: Recognizer, path: Path, opts: PredictOptions, rows: RowFile | None, echo, progress) -> int:
    from .faces import read_photo

    rgb = read_photo(path)
    found = recognizer.faces(rgb, detect=opts.detect)
    if opts.annotate_dir:
        _write_image(annotated(rgb, found), Path(opts.annotate_dir) / f"{path.stem}.png")
    for number, face in enumerate(found, 1):
        if rows:
            rows.add(_row(path, 0, "", face, number))
    detected = recognizer.detects(rgb.shape, opts.detect)
    looked, in_words = _looked_for(recognizer, rgb.shape) if detected else ({}, "")
    if opts.as_json:
        echo(json.dumps({"image": str(path), **looked, "faces": [f.to_dict() for f in found]}))
        return len(found)
    if detected:
        echo(f"{path}: {len(found)} face(s) found, {in_words}" if found
             else f"{path}: {_none_found(in_words, looked['smallest_face'])}")
    for number, face in enumerate(found, 1):
        ranked = "  ".join(f"{c} {p:.2f}" for c, p in sorted(face.probabilities.items(), key=lambda kv: -kv[1])[:3])
        where = "" if face.box == (0, 0, rgb.shape[1], rgb.shape[0]) else f" face {number} at {face.box}"
        echo(f"{path}:{where} {face.emotion}  ({ranked})")
    return len(found)


def _video(recognizer: Recognizer, path: Path, opts: PredictOptions, rows: RowFile | None, echo, progress) -> int:
    from tqdm import tqdm

    source = VideoSource(path)
    frames = recognizer.video(source, opts.every, opts.rate, all_frames=bool(opts.annotate_dir))
    times: dict[int, list[float]] = {}
    probs: dict[int, list[np.ndarray]] = {}
    writer, last, sampled, shape = None, [], 0, None
    bar = tqdm(desc=path.name, unit="frame", total=source.frame_count or None, disable=None if progress else True,
               leave=False)
    try:
        for frame in frames:
            bar.update(frame.index + 1 - bar.n)
            last = frame.faces if frame.sampled else last  # frames in between show the last verdicts
            if opts.annotate_dir:
                if writer is None:
                    h, w = frame.bgr.shape[:2]
                    writer = AnnotatedVideo(Path(opts.annotate_dir) / f"{path.stem}.mp4", source.fps, (w, h))
                writer.write(annotated(frame.bgr, last, channels="bgr"))
            if not frame.sampled:
                continue
            sampled, shape = sampled + 1, frame.bgr.shape
            for face in sorted(frame.faces, key=lambda f: f.id):
                times.setdefault(face.id, []).append(frame.seconds)
                probs.setdefault(face.id, []).append(face.probabilities)
                if rows:
                    rows.add(_row(path, frame.index, round(frame.seconds, 3), face, face.id))
            if opts.as_json:
                echo(json.dumps({"video": str(path), "frame": frame.index, "seconds": round(frame.seconds, 3),
                                 "faces": [f.to_dict() for f in frame.faces]}))
    except BaseException:
        if writer:
            writer.close(keep=False)
        raise
    finally:
        bar.close()
    if writer:
        writer.close(keep=True)
        plot_emotions(times, probs, Path(opts.annotate_dir) / f"{path.stem}-emotions.png", f"{path.name}: emotions over time")
    if not opts.as_json:
        found = f"{len(times)} face(s)"
        if shape is not None and recognizer.detects(shape):
            looked, in_words = _looked_for(recognizer, shape)
            found = f"{found}, {in_words}" if times else _none_found(in_words, looked["smallest_face"])
        echo(f"{path}: {sampled} frames analysed, {found}")
        for tid in sorted(times):
            mean = {c: np.mean([p[c] for p in probs[tid]]) for c in recognizer.classes}
            most = max(mean, key=mean.get)
            echo(f"{path}: face {tid}, {times[tid][0]:.1f}-{times[tid][-1]:.1f} s in {len(times[tid])} frames, "
                 f"mostly {most} ({mean[most]:.2f})")
    return sum(len(t) for t in times.values())


def _write_image(bgr: np.ndarray, out: Path) -> None:
    import cv2

    with PartialFile(out) as tmp:
        if not cv2.imwrite(str(tmp), bgr):
            raise FerOptError(f"{out}: cannot write the annotated image (is the folder writable?)")
