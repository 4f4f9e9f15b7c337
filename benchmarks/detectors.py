"""Face detectors side by side on real photographs, in one run: recall, false boxes, seconds per photo.

The photos (tests/group_photos.py): the five real portraits as they are (one face cut by
the picture's edge), group photos of 10 heads cut from them on face-free parts of the others
(20-400 px, some rotated, squeezed as if turned, half covered, dark or bright), and face-free
photos. A box counts as a face found when it overlaps the true box by IoU >= 0.3; every other
box, a second box on a face included, is false.

    python benchmarks/detectors.py --demo docs/faces-demo.jpg   # all detectors; the first group photo annotated
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from group_photos import CONDITIONS, empty_photos, group_photo, match, portraits  # noqa: E402
from fer_optuna.recognition import detectors  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detectors", nargs="+", default=list(detectors.DETECTORS))
    parser.add_argument("--groups", type=int, default=16)
    parser.add_argument("--json", default="benchmark-detectors.json")
    parser.add_argument("--demo", help="write the first group photo here, annotated by the bundled model and default detector")
    args = parser.parse_args()

    photos = portraits() + [group_photo(seed) for seed in range(args.groups)] + empty_photos()
    faces = sum(len(p.boxes) for p in photos)
    per_condition = {c: sum(c in cs for p in photos for cs in p.conditions) for c in CONDITIONS}
    print(f"{len(photos)} photos ({args.groups} groups of {photos[-5 - 1].rgb.shape[1]}x{photos[-5 - 1].rgb.shape[0]}), "
          f"{faces} faces; {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads")
    results = {}
    for name in args.detectors:
        detect = detectors.detector(name)
        detect(photos[0].rgb)  # the first call loads and warms up
        found = false = 0
        hits = {c: 0 for c in CONDITIONS}
        seconds = []
        for photo in photos:
            t0 = time.perf_counter()
            boxes = [d.box for d in detect(photo.rgb)]
            seconds.append(time.perf_counter() - t0)
            hit, wrong = match(photo.boxes, boxes)
            found += sum(hit)
            false += wrong
            for h, cs in zip(hit, photo.conditions):
                for c in cs:
                    hits[c] += h
        results[name] = {"recall": round(found / faces, 4), "found": found, "faces": faces,
                         "false_boxes_per_photo": round(false / len(photos), 3), "false_boxes": false,
                         "seconds_per_photo_median": round(float(np.median(seconds)), 4),
                         "recall_by_condition": {c: round(hits[c] / max(per_condition[c], 1), 3) for c in CONDITIONS}}
        r = results[name]
        print(f"{name:6} recall {r['recall']:.1%} ({found}/{faces})  false boxes/photo {r['false_boxes_per_photo']:.2f}  "
              f"{r['seconds_per_photo_median'] * 1000:.0f} ms/photo  "
              + "  ".join(f"{c} {v:.0%}" for c, v in r["recall_by_condition"].items()))
    if args.demo:
        import cv2

        from fer_optuna.recognition.recognizer import Recognizer, annotated

        group = photos[len(portraits())]
        cv2.imwrite(args.demo, annotated(group.rgb, Recognizer(device="cpu").faces(group.rgb)), [cv2.IMWRITE_JPEG_QUALITY, 85])
    results["faces_by_condition"] = per_condition
    results["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
