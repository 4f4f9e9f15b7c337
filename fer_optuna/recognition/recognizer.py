"""The Python API: the emotions of the faces in photos, frames and videos.

    from fer_optuna import Recognizer

    recognizer = Recognizer()                       # the bundled model and the default detector
    for face in recognizer.faces("group.jpg"):      # a path, a PIL image or a NumPy array
        print(face.box, face.emotion, face.probabilities)

The model and the detector are loaded once; every call after that is inference only.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fer_optuna.errors import FerOptError
from fer_optuna.training.checkpoints import model_file
from fer_optuna.training.data import SIDE
from . import detectors, faces
from .detectors import DEFAULT_DETECTOR, Detection
from .video import FaceTracker, VideoSource


@dataclass(frozen=True)
class FaceEmotion:
    box: tuple[int, int, int, int]  # x, y, width, height in the picture's pixels
    score: float  # the detector's confidence (1.0 for a given box)
    probabilities: dict[str, float]  # every class of the model, in its order
    id: int | None = None  # a face's id across the frames of a video (None for a photo)

    @property
    def emotion(self) -> str:
        return max(self.probabilities, key=self.probabilities.get)

    def to_dict(self) -> dict:
        return {"box": list(self.box), "score": round(self.score, 4), "emotion": self.emotion,
                "probabilities": {c: round(v, 4) for c, v in self.probabilities.items()},
                **({"id": self.id} if self.id is not None else {})}


@dataclass(frozen=True)
class VideoFrame:
    index: int  # the frame's number, from 0
    seconds: float
    faces: list[FaceEmotion] = field(default_factory=list)
    sampled: bool = True  # analysed; with all_frames, the frames in between are not (no faces)
    bgr: np.ndarray | None = field(default=None, repr=False)  # the frame itself, for drawing on


class Recognizer:
    """A FER model and a face detector, loaded once.

    model: a bundled model's name (fer2013, ferplus: docs/model.md), a checkpoint (.pt, also an ensemble) or an
    .onnx file [default: fer2013].
    detector: mtcnn (the default), yunet or haar; see fer_optuna.recognition.detectors.
    min_face: look for faces down to this many pixels across [default: the detector's own limit,
    which grows with the photo: see smallest_face]; below it a photo is looked at upscaled.
    device: auto (CUDA if present), cpu, cuda or cuda:N. precision: fp32 (the default) or bf16.
    tta: average over test-time views (needs a .pt model).
    """

    def __init__(self, model: str | Path | None = None, detector: str = DEFAULT_DETECTOR, device: str = "auto",
                 precision: str | None = None, tta: bool = False, min_face: int | None = None):
        from fer_optuna.training.portable import Classifier

        self.model_path = model_file(model, "model")
        self.classifier = Classifier(self.model_path, device, precision)
        self.classes = self.classifier.classes  # the model's class names, in its outputs' order
        self.detector_name = detector
        if min_face is not None and min_face < 4:
            raise FerOptError(f"min_face {min_face}: a face must be at least 4 pixels across")
        self._detect = detectors.detector(detector)
        self.min_face = min_face
        self.tta = tta

    def classify(self, crops: np.ndarray) -> np.ndarray:
        """Class probabilities (N, classes), in self.classes order, for uint8 face crops (N, 48, 48)."""
        crops = np.asarray(crops)
        if crops.ndim != 3 or crops.shape[1:] != (SIDE, SIDE):
            raise FerOptError(f"face crops of shape {crops.shape}: expected (N, {SIDE}, {SIDE}) uint8")
        if not len(crops):
            return np.zeros((0, len(self.classes)), np.float32)
        return self.classifier.probs(crops.astype(np.uint8), self.tta)

    def faces(self, image, boxes: Iterable[tuple[int, int, int, int]] | None = None, channels: str = "rgb",
              detect: bool = True) -> list[FaceEmotion]:
        """Every face in a picture with its box, detector score, emotion and probabilities, most confident first.

        image: a path, a PIL image, or a NumPy array, gray (H, W) or color (H, W, 3) in `channels`
        order ('bgr' for OpenCV's images). boxes: faces found elsewhere, (x, y, w, h) each; then
        nothing is detected. detect=False, or a 48x48 picture: the whole picture is the face.
        """
        rgb = faces.as_rgb(image, channels)
        return self._emotions(rgb, self._find(rgb, boxes, detect))

    def smallest_face(self, image, channels: str = "rgb") -> int:
        """The smallest face, in pixels across, the detector looks for in this picture (or a picture
        of this (height, width)): a face below it is not found."""
        shape = tuple(image) if isinstance(image, tuple) else faces.as_rgb(image, channels).shape
        return self._detect.smallest(shape, self.min_face)

    def detects(self, shape, detect: bool = True) -> bool:
        """Whether faces() looks for faces in a picture of this shape: a 48x48 one is a face crop."""
        return detect and tuple(shape[:2]) != (SIDE, SIDE)

    def track(self, frames: Iterable, channels: str = "bgr") -> Iterator[list[FaceEmotion]]:
        """The faces of each frame of a stream, each with an id it keeps from frame to frame.
        channels: 'bgr' by default, as cv2.VideoCapture gives them."""
        tracker = FaceTracker()
        for frame in frames:
            yield tracker.label(self.faces(frame, channels=channels))

    def video(self, source: str | Path | int | VideoSource, every: int = 1, rate: float | None = None,
              all_frames: bool = False) -> Iterator[VideoFrame]:
        """The faces of every `every`-th frame (or `rate` frames a second) of a video file or a camera index,
        ids kept across frames. all_frames: also yield the frames in between (no faces), for drawing."""
        source = source if isinstance(source, VideoSource) else VideoSource(source)
        tracker = FaceTracker()
        for frame in source.frames(source.step(every, rate), decode_all=all_frames):
            found = tracker.label(self.faces(frame.bgr, channels="bgr")) if frame.sampled else []
            yield VideoFrame(frame.index, frame.seconds, found, frame.sampled, frame.bgr)

    # ----------------------------------------------------------------------- the steps

    def _find(self, rgb: np.ndarray, boxes, detect: bool) -> list[faces.Face]:
        if boxes is not None:
            given = [Detection(tuple(int(v) for v in box), 1.0) for box in boxes]
            if any(len(d.box) != 4 or d.box[2] < 1 or d.box[3] < 1 for d in given):
                raise FerOptError("boxes: expected (x, y, width, height) each, width and height at least 1")
            return faces.faces_in(rgb, given)
        if not self.detects(rgb.shape, detect):
            return [faces.whole(rgb)]
        return faces.faces_in(rgb, self._detect(rgb, self.min_face))

    def _emotions(self, rgb: np.ndarray, found: list[faces.Face]) -> list[FaceEmotion]:
        probs = self.classify(np.stack([f.crop for f in found])) if found else np.zeros((0, len(self.classes)))
        return [FaceEmotion(f.box, float(f.score), {c: float(v) for c, v in zip(self.classes, p)}) for f, p in zip(found, probs)]


def annotated(image, found: list[FaceEmotion], channels: str = "rgb") -> np.ndarray:
    """A BGR copy of the picture with each face boxed and labelled (with its id in a video)."""
    rgb = faces.as_rgb(image, channels)
    labels = [(f"{f.id}: " if f.id is not None else "") + f"{f.emotion} {f.probabilities[f.emotion]:.0%}" for f in found]
    return faces.draw(np.ascontiguousarray(rgb[..., ::-1]), [f.box for f in found], labels)
