"""Video: frames per second processed for a 640x480 clip, every frame and every 5th, per detector, in one run.

The clip (tests/group_photos.py's moving_faces_clip): two real heads sliding across a
background for 10 s at 25 fps. Frames per second counts the clip's frames (decoded, and
analysed or skipped) over the seconds spent, after the model and detector are loaded.

    python benchmarks/video.py
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from group_photos import moving_faces_clip  # noqa: E402
from fer_optuna.recognition.detectors import DETECTORS  # noqa: E402
from fer_optuna.recognition.recognizer import Recognizer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detectors", nargs="+", default=list(DETECTORS))
    parser.add_argument("--every", nargs="+", type=int, default=[1, 5])
    parser.add_argument("--json", default="benchmark-video.json")
    args = parser.parse_args()

    clip = Path(tempfile.mkdtemp()) / "clip.mp4"
    moving_faces_clip(clip, frames=250)
    print(f"640x480, 250 frames; {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads")
    results = {}
    for name in args.detectors:
        recognizer = Recognizer(detector=name, device="cpu")
        next(iter(recognizer.video(clip)))  # load and warm up
        for every in args.every:
            t0 = time.perf_counter()
            frames = list(recognizer.video(clip, every))
            seconds = time.perf_counter() - t0
            ids = {f.id for frame in frames for f in frame.faces}
            results[f"{name}/every-{every}"] = {"fps": round(250 / seconds, 1), "sampled": len(frames), "face_ids": len(ids)}
            print(f"{name:6} every {every}: {250 / seconds:5.1f} frames/s ({len(frames)} analysed, {len(ids)} face ids)")
    results["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
