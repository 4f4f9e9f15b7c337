"""Faces in pictures: read any image, crop faces to FER2013's 48x48 framing, draw the verdicts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fer_optuna.errors import FerOptError
from fer_optuna.training.data import SIDE
from .detectors import Detection

# Photos up to 64 megapixels are read (phone cameras reach 48).
MAX_PHOTO_PIXELS = 64_000_000


@dataclass(frozen=True)
class Face:
    box: tuple[int, int, int, int]  # x, y, width, height in the picture's pixels
    score: float  # the detector's confidence (1.0 for a box given by the caller or a whole picture)
    crop: np.ndarray  # uint8 (48, 48)


def read_photo(path: Path) -> np.ndarray:
    """Any image file as uint8 RGB (H, W, 3); a clear error for what is not one."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_PHOTO_PIXELS:
                raise FerOptError(f"{path}: {image.width}x{image.height} pixels is too large; resize it first")
            return pil_to_rgb(image)
    except FileNotFoundError:
        raise FerOptError(f"{path}: no such image file") from None
    except IsADirectoryError:
        raise FerOptError(f"{path}: a folder, not an image") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise FerOptError(f"{path}: cannot read it as an image ({e})") from None


def pil_to_rgb(image) -> np.ndarray:
    """A PIL image of any mode as uint8 RGB, upright: EXIF rotation applied, transparency laid on
    white, 16-bit and float pixels scaled to 8 bits (PIL's own convert clips them), CMYK converted."""
    from PIL import ImageOps

    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        values = np.asarray(image).astype(np.float64)
        peak = values.max(initial=0)
        top = 65535.0 if image.mode.startswith("I;16") or peak > 255 else 1.0 if image.mode == "F" and peak <= 1 else 255.0
        gray = np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, -1)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = np.asarray(image.convert("RGBA")).astype(np.float32)
        alpha = rgba[..., 3:] / 255.0
        return (rgba[..., :3] * alpha + 255.0 * (1 - alpha) + 0.5).astype(np.uint8)
    return np.asarray(image.convert("RGB"))


def as_rgb(image, channels: str = "rgb") -> np.ndarray:
    """A path, a PIL image or a NumPy array (gray (H, W), or (H, W, 3|4) in `channels` order) as uint8 RGB."""
    if isinstance(image, (str, Path)):
        return read_photo(Path(image))
    if hasattr(image, "mode") and hasattr(image, "size"):  # a PIL image
        return pil_to_rgb(image)
    array = np.asarray(image)
    if array.dtype != np.uint8:
        if array.dtype == np.uint16:
            array = array / 257.0
        elif array.dtype.kind == "f" and array.max(initial=0) <= 1.0:
            array = array * 255.0  # floats in 0-1, as scikit-image and matplotlib keep them
        array = np.clip(np.asarray(array, np.float64) + 0.5, 0, 255).astype(np.uint8)
    if array.ndim == 2:
        return np.repeat(array[..., None], 3, -1)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise FerOptError(f"an image array of shape {array.shape}: expected (H, W) gray or (H, W, 3) color")
    if channels not in ("rgb", "bgr"):
        raise FerOptError(f"channels {channels!r}: expected 'rgb' or 'bgr' (OpenCV's frames are bgr)")
    array = array[..., :3]
    return np.ascontiguousarray(array[..., ::-1] if channels == "bgr" else array)


def gray(rgb: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def crop(gray_photo: np.ndarray, box: tuple[int, int, int, int]) -> tuple[tuple[int, int, int, int], np.ndarray]:
    """The square on the box's longer side, clipped to the photo, as 48x48: its box and pixels.

    No margin: on PublicTest faces enlarged on a canvas, where the true crop is known, every
    detector's longer side is already 94-98% of FER2013's crop, and a 10% margin cost the
    labels 7-9 points."""
    import cv2

    h, w = gray_photo.shape
    x, y, bw, bh = box
    side = max(bw, bh)
    cx, cy = x + bw / 2, y + bh / 2
    x0, y0 = max(0, round(cx - side / 2)), max(0, round(cy - side / 2))
    x1, y1 = min(w, round(cx + side / 2)), min(h, round(cy + side / 2))
    if x1 - x0 < 1 or y1 - y0 < 1:
        raise FerOptError(f"face box {tuple(box)} lies outside the {w}x{h} picture")
    pixels = cv2.resize(gray_photo[y0:y1, x0:x1], (SIDE, SIDE), interpolation=cv2.INTER_AREA)
    return (x0, y0, x1 - x0, y1 - y0), pixels


def faces_in(rgb: np.ndarray, detections: list[Detection]) -> list[Face]:
    g = gray(rgb)
    faces = []
    for d in detections:
        box, pixels = crop(g, d.box)
        faces.append(Face(box, d.score, pixels))
    return faces


def whole(rgb: np.ndarray) -> Face:
    """The picture is the face (a 48x48 crop, or --no-detect): all of it, resized."""
    import cv2

    h, w = rgb.shape[:2]
    return Face((0, 0, w, h), 1.0, cv2.resize(gray(rgb), (SIDE, SIDE), interpolation=cv2.INTER_AREA))


# --------------------------------------------------------------------------- drawing

GREEN = (40, 220, 40)  # BGR, as OpenCV draws


def draw(canvas_bgr: np.ndarray, boxes: list[tuple[int, int, int, int]], labels: list[str]) -> np.ndarray:
    """Boxes and labels drawn on a BGR picture, in place. A label's height follows its face's box and the
    picture's size (readable on a 2048-px photo and on a 48-px crop), and it stays inside the picture."""
    import cv2

    ph, pw = canvas_bgr.shape[:2]
    for (x, y, w, h), label in zip(boxes, labels):
        cv2.rectangle(canvas_bgr, (x, y), (x + w, y + h), GREEN, max(1, round(max(w / 120, max(ph, pw) / 800))))
        # FONT_HERSHEY_SIMPLEX is about 22 px high at scale 1. Text an eighth of the face's width high
        # spans about the face; at least 1/80 of the picture, so small faces in large photos stay readable.
        scale = max(w / 8, max(ph, pw) / 80, 10) / 22
        thick = max(1, round(scale * 1.2))
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        pad = max(2, th // 5)
        box_h = th + base + 2 * pad
        left = min(max(0, x), max(0, pw - tw - 2 * pad))
        top = y - box_h if y - box_h >= 0 else min(y + h, ph - box_h) if y + h + box_h <= ph else max(0, y)
        cv2.rectangle(canvas_bgr, (left, top), (left + tw + 2 * pad, top + box_h), GREEN, -1)
        cv2.putText(canvas_bgr, label, (left + pad, top + pad + th), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick,
                    cv2.LINE_AA)
    return canvas_bgr

