"""Faces in photos: find them, crop them to 48x48, draw the verdicts.

The detector is OpenCV's frontal-face Haar cascade, whose weights ship inside the
opencv-python-headless wheel: nothing is downloaded at run time. A picture that
already is a face crop (48x48) is classified whole.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import CLASSES, SIDE
from .errors import FerOptError

# Photos up to 64 megapixels are read (phone cameras reach 48); the cascade runs on a copy
# at most DETECT_SIDE pixels long, which finds the same faces in a fraction of the time.
MAX_PHOTO_PIXELS = 64_000_000
DETECT_SIDE = 1600
# Margin added around the detector's box on every side, as a fraction of its side:
# the cascade's box stops at the eyebrows; FER2013's crops show a little more.
MARGIN = 0.1


@dataclass(frozen=True)
class Face:
    box: tuple[int, int, int, int]  # x, y, width, height in the photo's pixels
    crop: np.ndarray  # uint8 (48, 48)


def read_photo(path: Path) -> np.ndarray:
    """Any image file as uint8 RGB (H, W, 3); a clear error for what is not one."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_PHOTO_PIXELS:
                raise FerOptError(f"{path}: {image.width}x{image.height} pixels is too large; resize it first")
            return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    except FileNotFoundError:
        raise FerOptError(f"{path}: no such image file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise FerOptError(f"{path}: cannot read it as an image ({e})") from None


def _gray(rgb: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


@functools.cache
def _cascade():
    import cv2

    return cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"))


def find_faces(rgb: np.ndarray, detect: bool = True) -> list[Face]:
    """The faces of a photo, largest first; a 48x48 picture (or detect=False) is one face, whole."""
    import cv2

    gray = _gray(rgb)
    h, w = gray.shape
    if not detect or (h, w) == (SIDE, SIDE):
        return [Face((0, 0, w, h), cv2.resize(gray, (SIDE, SIDE), interpolation=cv2.INTER_AREA))]
    scale = min(1.0, DETECT_SIDE / max(h, w))
    small = cv2.resize(gray, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA) if scale < 1 else gray
    # minNeighbors 6 and a floor on face size keep false detections on textured backgrounds rare.
    smallest = max(24, min(small.shape) // 40)
    boxes = _cascade().detectMultiScale(small, scaleFactor=1.1, minNeighbors=6, minSize=(smallest, smallest))
    faces = []
    for box in _one_per_face(boxes):
        x, y, bw, bh = (round(v / scale) for v in box)
        m = round(MARGIN * max(bw, bh))
        x0, y0, x1, y1 = max(0, x - m), max(0, y - m), min(w, x + bw + m), min(h, y + bh + m)
        crop = cv2.resize(gray[y0:y1, x0:x1], (SIDE, SIDE), interpolation=cv2.INTER_AREA)
        faces.append(Face((x0, y0, x1 - x0, y1 - y0), crop))
    return faces


def _one_per_face(boxes) -> list[tuple[int, int, int, int]]:
    """Largest first, without the boxes that lie mostly inside a larger one (the cascade
    sometimes also fires on part of a face: a mouth and chin, an eye and a cheek)."""
    kept: list[tuple[int, int, int, int]] = []
    for x, y, w, h in sorted((tuple(map(int, b)) for b in boxes), key=lambda b: -b[2] * b[3]):
        inside = [max(0, min(x + w, kx + kw) - max(x, kx)) * max(0, min(y + h, ky + kh) - max(y, ky))
                  for kx, ky, kw, kh in kept]
        if max(inside, default=0) < 0.3 * w * h:
            kept.append((x, y, w, h))
    return kept


def annotate(rgb: np.ndarray, faces: list[Face], probs: np.ndarray, out: Path) -> None:
    """The photo with each face boxed and labelled with its emotion, written to `out`."""
    import cv2

    canvas = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    thick = max(1, round(max(canvas.shape[:2]) / 400))
    for face, p in zip(faces, probs):
        x, y, w, h = face.box
        best = int(np.argmax(p))
        cv2.rectangle(canvas, (x, y), (x + w, y + h), (40, 220, 40), thick)
        label = f"{CLASSES[best]} {p[best]:.0%}"
        scale = max(0.4, w / 320)
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        top = y - th - base - 2 if y - th - base - 2 >= 0 else y  # above the box, or inside its top edge
        cv2.rectangle(canvas, (x, top), (x + tw + 4, top + th + base + 2), (40, 220, 40), -1)
        cv2.putText(canvas, label, (x + 2, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick, cv2.LINE_AA)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), canvas):
        raise FerOptError(f"{out}: cannot write the annotated image (is the folder writable?)")
