"""Videos: frames from any container and codec OpenCV's FFmpeg reads, face ids kept from frame to
frame, the annotated video and a plot of each face's emotions over time."""

from __future__ import annotations

import os
from collections.abc import Iterator
import dataclasses
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from fer_optuna.errors import FerOptError
from fer_optuna.training.files import PartialFile

T = TypeVar("T")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".ts")


@contextmanager
def _quiet_ffmpeg() -> Iterator[None]:
    """FFmpeg's own messages about a damaged file would come on top of our one line. OpenCV reads
    OPENCV_FFMPEG_LOGLEVEL once, when its FFmpeg backend first opens a file, so it is set only
    around the opening; a level the user set stays."""
    if "OPENCV_FFMPEG_LOGLEVEL" in os.environ:
        yield
        return
    os.environ["OPENCV_FFMPEG_LOGLEVEL"] = "-8"
    try:
        yield
    finally:
        os.environ.pop("OPENCV_FFMPEG_LOGLEVEL", None)


@dataclass(frozen=True)
class Frame:
    index: int  # the frame's number in the video, from 0
    seconds: float
    bgr: np.ndarray  # uint8 (H, W, 3), OpenCV's channel order
    sampled: bool  # chosen for analysis (every N-th, or at the asked rate)


class VideoSource:
    """A video file (or a camera index) opened and checked: a clear error for what cannot be read."""

    def __init__(self, source: str | Path | int):
        import cv2

        self.name = f"camera {source}" if isinstance(source, int) else str(source)
        if not isinstance(source, int) and not Path(source).is_file():
            raise FerOptError(f"{source}: no such video file")
        # OpenCV logs its own lines about a file it cannot open; ours says what to do.
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        try:
            with _quiet_ffmpeg():
                self.capture = cv2.VideoCapture(source if isinstance(source, int) else str(source))
        finally:
            cv2.utils.logging.setLogLevel(level)
        if not self.capture.isOpened():
            raise FerOptError(f"{self.name}: cannot read it as a video (no frames, an unknown container or codec, or a "
                              "damaged file); convert it to MP4 (H.264), e.g. with ffmpeg -i IN OUT.mp4")
        self.live = isinstance(source, int)
        fps = self.capture.get(cv2.CAP_PROP_FPS)
        self.fps = fps if 0 < fps < 1000 else 30.0  # some containers do not say; cameras may say 0
        self.frame_count = int(self.capture.get(cv2.CAP_PROP_FRAME_COUNT)) if not self.live else 0
        if not self.live and self.frame_count <= 0 and not self._has_a_frame():
            raise FerOptError(f"{self.name}: the video has no frames")

    def _has_a_frame(self) -> bool:
        import cv2

        ok = self.capture.grab()
        self.capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
        return ok

    def step(self, every: int = 1, rate: float | None = None) -> int:
        """Analyse every `every`-th frame, or `rate` frames a second."""
        if every < 1 or (rate is not None and rate <= 0):
            raise FerOptError("every takes a whole number from 1, rate a number of frames per second above 0",
                              flag="--every or --rate")
        return max(1, round(self.fps / rate)) if rate else every

    def frames(self, step: int = 1, decode_all: bool = False) -> Iterator[Frame]:
        """Every sampled frame (and, with decode_all, the ones in between too, for an annotated copy)."""
        index = 0
        try:
            while True:
                sampled = index % step == 0
                if sampled or decode_all:
                    ok, bgr = self.capture.read()
                    if not ok:
                        break
                    yield Frame(index, index / self.fps, bgr, sampled)
                elif not self.capture.grab():  # skipped frames are not converted to pixels
                    break
                index += 1
        finally:
            self.capture.release()
        if index == 0:
            raise FerOptError(f"{self.name}: no frame could be decoded (a codec OpenCV's FFmpeg lacks, or a damaged "
                              "file); convert it to MP4 (H.264), e.g. with ffmpeg -i IN OUT.mp4")
        # Containers count their frames; one that ends well short of its count was cut off.
        if self.frame_count and index < 0.95 * self.frame_count - 1:
            raise FerOptError(f"{self.name}: the video ends after frame {index} of the {self.frame_count} it declares "
                              "(truncated or damaged); nothing was written")


def _iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    inter = max(0, min(ax + aw, bx + bw) - max(ax, bx)) * max(0, min(ay + ah, by + bh) - max(ay, by))
    union = aw * ah + bw * bh - inter
    return inter / union if union else 0.0


def _closeness(last, box, min_iou: float) -> float:
    """How likely `box` is the face last seen at `last`: their overlap (IoU) where it is at least
    `min_iou`; else, for boxes of about the same size, less than min_iou and falling with the
    distance of their centres, to 0 at a box's side. Sampled every 5th frame, a face often moves
    further than its overlap can follow."""
    overlap = _iou(last, box)
    if overlap >= min_iou:
        return overlap
    side, other = max(last[2:]), max(box[2:])
    if not 0.5 <= other / max(side, 1) <= 2:
        return 0.0
    shift = np.hypot(last[0] + last[2] / 2 - box[0] - box[2] / 2, last[1] + last[3] / 2 - box[1] - box[3] / 2)
    return max(0.0, 1 - shift / side) * min_iou


class FaceTracker:
    """Keeps a face's id from frame to frame: each box takes the id of the last frame's box closest to it
    (the best overlap, or failing that the nearest of about its size), or a new one. A face missed for
    up to `patience` frames keeps its id when it comes back near where it was."""

    def __init__(self, min_iou: float = 0.3, patience: int = 5):
        self.min_iou, self.patience = min_iou, patience
        self.tracks: dict[int, tuple[tuple[int, int, int, int], int]] = {}  # id -> (last box, frames since seen)
        self.next_id = 1

    def update(self, boxes: list[tuple[int, int, int, int]]) -> list[int]:
        pairs = sorted(((_closeness(last, box, self.min_iou), tid, i) for tid, (last, _) in self.tracks.items()
                        for i, box in enumerate(boxes)), reverse=True)
        ids: list[int | None] = [None] * len(boxes)
        for closeness, tid, i in pairs:
            if closeness > 0 and ids[i] is None and tid not in ids:
                ids[i] = tid
        for i, box in enumerate(boxes):
            if ids[i] is None:
                ids[i], self.next_id = self.next_id, self.next_id + 1
            self.tracks[ids[i]] = (box, 0)
        for tid, (last, missed) in list(self.tracks.items()):
            if tid not in ids:
                if missed + 1 > self.patience:
                    del self.tracks[tid]
                else:
                    self.tracks[tid] = (last, missed + 1)
        return ids

    def label(self, faces: list[T]) -> list[T]:
        """The faces of the next frame (dataclasses with a box and an id), each with its id set."""
        return [dataclasses.replace(f, id=i) for f, i in zip(faces, self.update([f.box for f in faces]))]


class AnnotatedVideo:
    """An annotated copy of a video, written under a temporary name and renamed when whole."""

    def __init__(self, out: Path, fps: float, size: tuple[int, int]):
        import cv2

        self.file = PartialFile(out)
        self.writer = cv2.VideoWriter(str(self.file.path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
        if not self.writer.isOpened():
            self.file.close(keep=False)
            raise FerOptError(f"{out}: cannot write the annotated video (is the folder writable?)")

    def write(self, bgr: np.ndarray) -> None:
        self.writer.write(bgr)

    def close(self, keep: bool) -> None:
        self.writer.release()
        self.file.close(keep)


def plot_emotions(times: dict[int, list[float]], probs: dict[int, list[dict[str, float]]], out: Path, title: str,
                  most: int = 6) -> None:
    """One panel per face id (the `most` seen longest): its probabilities over time (`probs`: dicts class -> value)."""
    from matplotlib.figure import Figure  # not pyplot: no global backend or figure list

    shown = sorted(times, key=lambda tid: -len(times[tid]))[:most] or []
    fig = Figure(figsize=(10, 1.2 + 1.6 * max(1, len(shown))))
    axes = fig.subplots(max(1, len(shown)), 1, squeeze=False, sharex=True)
    for ax, tid in zip(axes[:, 0], shown):
        for name in probs[tid][0]:
            ax.plot(times[tid], [p[name] for p in probs[tid]], label=name, lw=1.4)
        ax.set_ylim(0, 1)
        ax.set_ylabel(f"face {tid}")
    if not shown:
        axes[0, 0].text(0.5, 0.5, "no face found", ha="center", va="center")
    axes[0, 0].set_title(title)
    if shown:
        axes[0, 0].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes[-1, 0].set_xlabel("seconds")
    fig.tight_layout()
    with PartialFile(out) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
