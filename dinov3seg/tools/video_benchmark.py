"""Frames per second of Segmenter.video, and the flicker that temporal smoothing removes (issue 19).

    python -m dinov3seg.tools.video_benchmark --config quickstart --size 240x320 --frames 8 \
        [--batch-size 1 4] [--classes 10] [--device cpu] [--flicker --smoothing 0 0.5 0.8 --noise 40] [--json OUT]

Weights are random (every ``MODEL.*.WEIGHTS`` set to ""): speed does not depend on their values. The clip is
synthetic (coloured shapes moving over a background), written as mp4 and read back through OpenCV, so the
figure includes decoding (in the loader thread). The first frame, which also encodes the vocabulary with the
text tower (once per run), is timed apart; frames/s counts the frames after it. "draw + encode" is the demo's
extra work per frame: the overlay with its legend and the mp4 encoding.

Flicker (``--flicker``): the share of pixels whose label changes between consecutive frames, on a clip where
nothing moves (two colour halves) but every frame has fresh Gaussian noise of ``--noise`` (sigma, 0-255 scale);
for each ``--smoothing`` alpha. "lag" is the price: on the moving clip, the share of pixels whose smoothed label
differs from the unsmoothed one.
"""
import argparse
import json
import os
import tempfile
import time
from typing import Dict, Iterator, List
from unittest import mock

import numpy as np
import torch

from ..inference.outputs import draw_overlay
from ..inference.segmenter import Segmenter
from ..inference.video import VideoWriter, flicker
from .count_params import WEIGHT_KEYS


def moving_clip(height: int, width: int, frames: int) -> Iterator[np.ndarray]:
    """H x W x 3 uint8 frames: a red box and a green disc moving over blue."""
    y, x = np.mgrid[0:height, 0:width]
    for t in range(frames):
        rgb = np.empty((height, width, 3), np.uint8)
        rgb[:] = (40, 60, 220)
        x0 = int((0.05 + 0.5 * t / max(frames, 1)) * width)
        rgb[height // 8 : height // 2, x0 : x0 + width // 3] = (220, 40, 40)
        cx, cy, r = width * (0.8 - 0.4 * t / max(frames, 1)), 0.7 * height, 0.15 * min(height, width)
        rgb[(y - cy) ** 2 + (x - cx) ** 2 < r * r] = (40, 200, 60)
        yield rgb


def noisy_static_clip(height: int, width: int, frames: int, sigma: float, seed: int = 0) -> Iterator[np.ndarray]:
    """The same two-colour picture in every frame, plus fresh N(0, sigma) noise per frame."""
    rng = np.random.default_rng(seed)
    base = np.empty((height, width, 3), np.float32)
    base[:, : width // 2] = (180, 80, 70)
    base[:, width // 2 :] = (70, 90, 170)
    for _ in range(frames):
        yield np.clip(base + rng.normal(0, sigma, base.shape), 0, 255).astype(np.uint8)


def write(path: str, frames: Iterator[np.ndarray], height: int, width: int, fps: float = 25.0) -> str:
    with VideoWriter(path, fps, (width, height)) as writer:
        for rgb in frames:
            writer.write(rgb)
    return path


def frames_per_second(segmenter: Segmenter, path: str, names: List[str], batch_size: int) -> Dict[str, float]:
    """Segmenter.video over the clip: the first frame (text encoding, warm-up) apart, then frames/s."""
    t0 = time.perf_counter()
    first, times, results = None, [], []
    for frame in segmenter.video(path, names, batch_size=batch_size):
        now = time.perf_counter()
        if first is None:
            first, start = now - t0, now
        times.append(now)
        results.append(frame)
    steady = (len(times) - 1) / (times[-1] - start) if len(times) > 1 else float("nan")
    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        height, width = results[0].image.shape[:2]
        with VideoWriter(os.path.join(tmp, "out.mp4"), 25.0, (width, height)) as writer:
            for frame in results:
                shares = frame.result.pixel_shares()
                writer.write(np.asarray(draw_overlay(frame.image, frame.result.labels, frame.result.class_names,
                                                     list(shares.values()), legend="inset")))
    draw = (time.perf_counter() - t1) / len(results)
    return {"batch_size": batch_size, "frames": len(results), "first_frame_s": round(first, 3),
            "frames_per_s": round(steady, 4), "seconds_per_frame": round(1 / steady, 3),
            "draw_and_encode_s_per_frame": round(draw, 4)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="quickstart", help="config name or YAML path")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", default="240x320", help="frame HEIGHTxWIDTH")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batch-size", type=int, nargs="+", default=[1])
    parser.add_argument("--flicker", action="store_true", help="also measure flicker with --smoothing values")
    parser.add_argument("--smoothing", type=float, nargs="+", default=[0.0, 0.5, 0.8])
    parser.add_argument("--noise", type=float, default=40.0)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[])
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    height, width = (int(v) for v in args.size.lower().split("x"))
    torch.manual_seed(0)
    # The training-free model refuses to build without its weight files; random weights are the point here.
    with mock.patch("dinov3seg.modeling.meta_arch_zeroshot.check_weight_files", lambda cfg: None):
        segmenter = Segmenter(args.config, device=args.device,
                              opts=[x for key in WEIGHT_KEYS for x in (key, "")] + list(args.opts))
    names = ["red", "blue", "green"] + [f"class number {i}" for i in range(max(0, args.classes - 3))]
    report = {"config": args.config, "device": args.device, "frame_size": [height, width], "classes": len(names),
              "torch_threads": torch.get_num_threads(), "load_average_at_start": os.getloadavg(), "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        clip = write(os.path.join(tmp, "moving.mp4"), moving_clip(height, width, args.frames), height, width)
        for batch_size in args.batch_size:
            report["runs"].append(frames_per_second(segmenter, clip, names, batch_size))
            print(json.dumps(report["runs"][-1]), flush=True)
        if args.flicker:
            static = write(os.path.join(tmp, "static.mp4"),
                           noisy_static_clip(height, width, args.frames, args.noise), height, width)
            raw_moving = [f.result.labels for f in segmenter.video(clip, names)]
            report["flicker"] = []
            for alpha in args.smoothing:
                labels = [f.result.labels for f in segmenter.video(static, names, temporal_smoothing=alpha)]
                moving = [f.result.labels for f in segmenter.video(clip, names, temporal_smoothing=alpha)]
                lag = float(np.mean([np.mean(a != b) for a, b in zip(moving, raw_moving)]))
                report["flicker"].append({"smoothing": alpha, "noise_sigma": args.noise,
                                          "flicker": round(flicker(labels), 4), "lag_on_moving_clip": round(lag, 4)})
                print(json.dumps(report["flicker"][-1]), flush=True)
    report["load_average_at_end"] = os.getloadavg()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
