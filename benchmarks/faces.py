"""Faces in photos: detection recall, false and double boxes, labels right, and seconds per photo, in one run.

Each 'group photo' is 12 PublicTest faces, enlarged to 160 px, on a textured background
(tests/conftest.py's face_canvas), so that each face's true label is known; the first is
written annotated for the docs.

    python benchmarks/faces.py --detector mtcnn --out docs/faces-demo.jpg
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from conftest import face_canvas  # noqa: E402
from fer_optuna.training import data  # noqa: E402
from fer_optuna.recognition.detectors import DEFAULT_DETECTOR, DETECTORS  # noqa: E402
from fer_optuna.recognition.recognizer import Recognizer, annotated  # noqa: E402

SIDE = 160


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help=".pt or .onnx [default: the bundled model]")
    parser.add_argument("--detector", choices=DETECTORS, default=DEFAULT_DETECTOR)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "fer2013.npz.xz"))
    parser.add_argument("--photos", type=int, default=10)
    parser.add_argument("--out", default="faces-demo.jpg", help="the first photo, annotated")
    parser.add_argument("--json", default="benchmark-faces.json")
    args = parser.parse_args()

    images, labels = data.load(args.data).split("val")
    recognizer = Recognizer(args.model, args.detector, "cpu")
    rng = np.random.default_rng(0)
    found = false_boxes = doubled = correct = 0
    seconds = []
    for k in range(args.photos):
        pick = rng.choice(len(labels), 12, replace=False)
        photo, corners = face_canvas(images[pick], side=SIDE, seed=k)
        t0 = time.perf_counter()
        detected = recognizer.faces(photo)
        seconds.append(time.perf_counter() - t0)
        hit = []
        for face in detected:
            cx, cy = face.box[0] + face.box[2] / 2, face.box[1] + face.box[3] / 2
            which = [i for i, (x0, y0) in enumerate(corners) if x0 <= cx < x0 + SIDE and y0 <= cy < y0 + SIDE]
            if not which:
                false_boxes += 1
                continue
            doubled += which[0] in hit
            hit.append(which[0])
            correct += face.emotion == data.CLASSES[labels[pick[which[0]]]]
        found += len(set(hit))
        if k == 0:
            cv2.imwrite(args.out, annotated(photo, detected))
    total = 12 * args.photos
    result = {"detector": args.detector, "photos": args.photos, "faces": total, "found": found, "false_boxes": false_boxes,
              "faces_with_two_boxes": doubled, "label_accuracy_on_found": round(correct / max(found, 1), 4),
              "seconds_per_photo_median": round(float(np.median(seconds)), 3), "photo_size": list(photo.shape[:2]),
              "model": str(recognizer.model_path), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "threads": torch.get_num_threads()}
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(f"{args.detector}: {found}/{total} faces found ({found / total:.0%}), {false_boxes} boxes off a face, {doubled} "
          f"faces boxed twice; labels right on {result['label_accuracy_on_found']:.1%} of the found faces; "
          f"{result['seconds_per_photo_median']:.2f} s per {photo.shape[1]}x{photo.shape[0]} photo (detection + "
          f"classification, {result['cpu_capability']}, {result['threads']} threads); annotated: {args.out}")


if __name__ == "__main__":
    main()
