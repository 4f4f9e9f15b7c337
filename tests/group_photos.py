"""Real photographs for the face tests and the detector benchmark, and group photos made from them.

tests/photos/ holds five real portraits (faces.json: each face's box, checked by eye); see its
README for where they come from. A 'group photo' pastes heads cut from them onto a face-free
part of another, at sizes from 20 to 400 pixels, some rotated, squeezed sideways as a head
turned away would be, half covered, dark or bright, so that every face's box is known.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PHOTOS = Path(__file__).parent / "photos"
# Rows below each portrait's face hold no face: suits, flags, curtains, a floor (backgrounds).
FACE_FREE_FROM_ROW = {"obama3.jpg": 330, "obama.jpg": 420, "grace_hopper.jpg": 380, "biden.jpg": 300}
CONDITIONS = ("small", "rotated", "turned", "covered", "dark", "bright")


@dataclass(frozen=True)
class Photo:
    name: str
    rgb: np.ndarray
    boxes: list[tuple[int, int, int, int]]  # every face, x, y, w, h
    conditions: list[tuple[str, ...]]  # per face, what was done to it


def _read(name: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(PHOTOS / name).convert("RGB"))


def portraits() -> list[Photo]:
    """The real photos as they are, one face each (one cut off by the picture's edge)."""
    truth = json.loads((PHOTOS / "faces.json").read_text())
    return [Photo(name, _read(name), [tuple(box)], [()]) for name, box in truth.items()]


def background(seed: int, size: tuple[int, int]) -> np.ndarray:
    import cv2

    names = sorted(FACE_FREE_FROM_ROW)
    name = names[seed % len(names)]
    rgb = _read(name)[FACE_FREE_FROM_ROW[name]:]
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def empty_photos(n: int = 4, size=(1600, 1067)) -> list[Photo]:
    """Face-free photos: every box a detector draws on them is a false one."""
    return [Photo(f"empty-{k}", background(k, size), [], []) for k in range(n)]


def group_photo(seed: int, n_faces: int = 10, size=(1600, 1067)) -> Photo:
    import cv2

    rng = np.random.default_rng(seed)
    canvas = background(seed + 1, size).copy()
    heads = portraits()
    boxes, conditions, taken = [], [], np.zeros(size[::-1], bool)
    for _ in range(n_faces * 20):
        if len(boxes) == n_faces:
            break
        head = heads[rng.integers(len(heads))]
        if head.name == "obama_partial_face.jpg":
            continue  # its face is cut by the picture's edge
        did = []
        face_h = float(np.exp(rng.uniform(np.log(20), np.log(400))))
        did += ["small"] * (face_h < 40)
        x, y, w, h = head.boxes[0]
        scale = face_h / h
        # The head with some of its surroundings: hair, neck, the room behind.
        px0, py0 = max(0, int(x - 0.4 * w)), max(0, int(y - 0.4 * h))
        px1, py1 = min(head.rgb.shape[1], int(x + 1.4 * w)), min(head.rgb.shape[0], int(y + 1.4 * h))
        patch = head.rgb[py0:py1, px0:px1].astype(np.float32)
        fx0, fy0, fx1, fy1 = x - px0, y - py0, x - px0 + w, y - py0 + h
        if rng.random() < 0.2:
            patch = patch * 0.35
            did.append("dark")
        elif rng.random() < 0.2:
            patch = patch * 1.4 + 70
            did.append("bright")
        if rng.random() < 0.25:  # a scarf, a hand or a mask over the lower half of the face
            colour = rng.integers(0, 255, 3)
            patch[int(fy0 + 0.55 * h):int(fy1), int(fx0 - 0.05 * w):int(fx1 + 0.05 * w)] = colour
            did.append("covered")
        squeeze = 1.0
        if rng.random() < 0.2:
            squeeze = rng.uniform(0.55, 0.75)
            did.append("turned")
        angle = 0.0
        if rng.random() < 0.3:
            angle = float(rng.choice([-1, 1]) * rng.uniform(12, 35))
            did.append("rotated")
        if rng.random() < 0.5:
            patch, fx0, fx1 = patch[:, ::-1], patch.shape[1] - fx1, patch.shape[1] - fx0
        ph, pw = patch.shape[:2]
        sx, sy = scale * squeeze, scale
        out_w, out_h = int(pw * sx) + 1, int(ph * sy) + 1
        # Rotation about the patch's centre, then a translation to a free spot of the canvas.
        rot = cv2.getRotationMatrix2D((out_w / 2, out_h / 2), angle, 1.0)
        corners = np.array([[0, 0], [out_w, 0], [0, out_h], [out_w, out_h]], float) @ rot[:, :2].T + rot[:, 2]
        span_w, span_h = np.ptp(corners[:, 0]), np.ptp(corners[:, 1])
        if span_w + 8 >= size[0] or span_h + 8 >= size[1]:
            continue
        ox, oy = rng.uniform(4, size[0] - span_w - 4), rng.uniform(4, size[1] - span_h - 4)
        matrix = np.array([[sx, 0, 0], [0, sy, 0]], float)
        matrix = rot @ np.vstack([matrix, [0, 0, 1]])
        matrix[:, 2] += [ox - corners[:, 0].min(), oy - corners[:, 1].min()]
        mask = cv2.warpAffine(np.ones((ph, pw), np.uint8), matrix, size) > 0
        if (mask & taken).any():
            continue
        warped = cv2.warpAffine(np.clip(patch, 0, 255).astype(np.uint8), matrix, size)
        canvas[mask] = warped[mask]
        taken |= cv2.dilate(mask.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
        face = np.array([[fx0, fy0], [fx1, fy0], [fx0, fy1], [fx1, fy1]], float) @ matrix[:, :2].T + matrix[:, 2]
        bx0, by0 = face.min(0)
        bx1, by1 = face.max(0)
        boxes.append((int(bx0), int(by0), int(bx1 - bx0), int(by1 - by0)))
        conditions.append(tuple(did))
    return Photo(f"group-{seed}", canvas, boxes, conditions)


def iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    inter = max(0, min(ax + aw, bx + bw) - max(ax, bx)) * max(0, min(ay + ah, by + bh) - max(ay, by))
    return inter / (aw * ah + bw * bh - inter)


def match(truth: list, found: list, min_iou: float = 0.3) -> tuple[list[bool], int]:
    """Which true faces a box found (greedily, best overlap first), and how many boxes are false:
    on no face, or a second box on a face already found."""
    pairs = sorted(((iou(t, f), i, j) for i, t in enumerate(truth) for j, f in enumerate(found)), reverse=True)
    hit, used = [False] * len(truth), set()
    for overlap, i, j in pairs:
        if overlap >= min_iou and not hit[i] and j not in used:
            hit[i] = True
            used.add(j)
    return hit, len(found) - len(used)


def moving_faces_clip(out: Path, frames: int = 60, size=(640, 480), fps: float = 25.0, codec: str = "mp4v") -> list[list]:
    """A video of two real heads sliding across a face-free background in opposite directions, crossing
    no one's path: the true face boxes of each frame (the left-to-right head first)."""
    import cv2

    heads = {p.name: p for p in portraits()}
    base = background(2, size)
    patches = []
    for name, face_h in (("obama.jpg", 110), ("grace_hopper.jpg", 90)):
        head = heads[name]
        x, y, w, h = head.boxes[0]
        s = face_h / h
        px0, py0 = max(0, int(x - 0.3 * w)), max(0, int(y - 0.3 * h))
        patch = head.rgb[py0:int(y + 1.3 * h), px0:int(x + 1.3 * w)]
        patch = cv2.resize(patch, (int(patch.shape[1] * s), int(patch.shape[0] * s)), interpolation=cv2.INTER_AREA)
        patches.append((patch, (int((x - px0) * s), int((y - py0) * s), int(w * s), int(h * s))))
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*codec), fps, size)
    truth = []
    for k in range(frames):
        frame, boxes = base.copy(), []
        t = k / max(frames - 1, 1)
        for (patch, (fx, fy, fw, fh)), (x0, x1, top) in zip(patches, ((10, 460, 40), (460, 10, 250))):
            ox, oy = int(x0 + (x1 - x0) * t), top
            frame[oy:oy + patch.shape[0], ox:ox + patch.shape[1]] = patch
            boxes.append((ox + fx, oy + fy, fw, fh))
        writer.write(np.ascontiguousarray(frame[..., ::-1]))
        truth.append(boxes)
    writer.release()
    return truth
