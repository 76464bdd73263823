"""Segment your own images and videos with your own class names.

    python demo/demo.py --config-file configs/quickstart.yaml --input photo.jpg \
        --vocabulary "cat, dog, grass" --output out/ --opts MODEL.WEIGHTS model_final.pth

--input takes files, directories (their images, not recursive) and globs ("photos/**/*.jpg"); a video
file named there is segmented as with --video-input.
The vocabulary comes from --vocabulary (comma-separated classes; "dog|puppy" gives one class with
two synonyms), --vocabulary-file (a JSON list, or one class per line with comma-separated synonyms) or
--dataset (a registered benchmark's class names, e.g. "ade20k_150"). For each image the demo writes
<name>.png (the label map over the image, with a legend of the classes present), <name>.json (the share
of pixels of every class) and labels/<name>.png (the raw label map: an index PNG, uint8, or uint16 when
there are more than 255 classes); label_names.json is the index -> name table of those PNGs, and
results.json gathers all inputs (and, under "failed", those that could not be read: the others are still
written; the exit status is 1 only when every input failed).

Videos: --video-input clip.mp4 writes clip.mp4 (the overlay with an inset legend, the input's size and frame
rate; MPEG-4 Part 2 "mp4v", no audio), clip.json (every class's pixel share per frame and over the clip),
clip_classes.png (the shares against time) and, with --save-labels, labels/clip/<frame>.png. --every N takes
every N-th frame (the output plays at fps / N), --max-frames stops early, --temporal-smoothing A blends each
frame's class scores with the previous frame's (exponential moving average; 0 = off).

Large folders: --batch-size images per model call (reading overlaps inference in a loader thread);
--skip-existing reuses outputs that an earlier run with the same settings completed (outputs are written
atomically, the JSON last, so a killed run leaves nothing that looks complete).

"None of these" pixels (both off by default): --threshold P labels a pixel "unlabeled" (value 255 in
the index PNG, 65535 when uint16) when its best class score is below P (the model's own probability:
sigmoid for the trained model, softmax for the training-free one); --distractors coco_stuff appends
COCO-Stuff's class names as distractors and labels the pixels they win "other" (a class of its own,
listed last).
"""
import argparse
import glob
import json
import logging
import os
import sys
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

import dinov3seg  # noqa: E402,F401  (registers the model and datasets)
from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from tqdm import tqdm  # noqa: E402

from dinov3seg.config import add_dinov3seg_config  # noqa: E402
from dinov3seg.data.datasets import read_class_file  # noqa: E402
from dinov3seg.errors import exit_on_input_error  # noqa: E402
from dinov3seg.data.vocabulary import check_user_vocabulary, validate_vocabulary  # noqa: E402
from dinov3seg.data.vocabulary import parse_vocabulary as parse_vocabulary_text  # noqa: E402
from dinov3seg.inference.outputs import (draw_result, plot_class_shares, save_image, save_json,  # noqa: E402
                                         save_labels, shares_record)
from dinov3seg.inference.segmenter import KNOWN_VOCABULARIES, Segmenter  # noqa: E402
from dinov3seg.inference.video import VIDEO_EXTENSIONS, VideoError, VideoReader, VideoWriter  # noqa: E402

logger = logging.getLogger("dinov3seg.demo")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")


class DemoError(Exception):
    """A bad input: reported as one clear line, exit status 2."""


# ---------------------------------------------------------------------------- arguments
def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE", help="model config (YAML)")
    parser.add_argument("--input", nargs="+", help="image files, directories or globs")
    parser.add_argument("--video-input", nargs="+", help="video files, directories or globs (decoded by OpenCV)")
    vocab = parser.add_mutually_exclusive_group(required=True)
    vocab.add_argument("--vocabulary", help='comma-separated class names, e.g. "cat, dog|puppy, grass"')
    vocab.add_argument("--vocabulary-file", help="JSON list of names, or one class per line")
    vocab.add_argument("--dataset", help="reuse a registered dataset's class names, e.g. ade20k_150")
    parser.add_argument("--output", required=True, help="directory for the PNGs and JSONs")
    parser.add_argument("--alpha", type=float, default=0.5, help="opacity of the label colours")
    parser.add_argument("--threshold", type=float, default=None,
                        help='pixels whose best score is below this probability are "unlabeled" (default: off)')
    parser.add_argument("--distractors", default=None,
                        help=f"append a known vocabulary ({', '.join(KNOWN_VOCABULARIES)}) or a registered "
                             'dataset\'s classes as distractors; their pixels become "other" (default: off)')
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images or frames per model call (default: 4 on a GPU, 1 on the CPU)")
    parser.add_argument("--skip-existing", action="store_true",
                        help="skip inputs whose outputs are complete from an earlier run with the same settings")
    parser.add_argument("--every", type=int, default=1, help="video: segment every N-th frame (default: all)")
    parser.add_argument("--max-frames", type=int, default=None, help="video: stop after this many segmented frames")
    parser.add_argument("--temporal-smoothing", type=float, default=0.0, metavar="A",
                        help="video: blend each frame's class scores with the previous frame's, "
                             "s = A * previous + (1 - A) * current (0 = off, the default; e.g. 0.6)")
    parser.add_argument("--save-labels", action="store_true",
                        help="video: also write one index PNG per frame to labels/<video>/<frame>.png")
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return parser


def setup_cfg(args):
    cfg = get_cfg()
    add_dinov3seg_config(cfg)
    if not os.path.isfile(args.config_file):
        raise DemoError(f"config file '{args.config_file}' does not exist")
    cfg.merge_from_file(args.config_file)
    try:
        cfg.merge_from_list(args.opts)
    except (KeyError, ValueError, AssertionError) as e:
        raise DemoError(f"bad --opts {' '.join(args.opts)}: {e}") from None
    weights = cfg.MODEL.WEIGHTS
    if weights and "://" not in weights and not os.path.isfile(weights):
        raise DemoError(f"MODEL.WEIGHTS '{weights}' does not exist (train one with train_net.py, or give its path)")
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.info("CUDA is not available: running on the CPU")
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg


def _check_user_vocabulary(names: List[str], source: str, shared_synonyms_ok: bool = False) -> List[str]:
    try:
        return check_user_vocabulary(names, source, shared_synonyms_ok)
    except ValueError as e:
        raise DemoError(str(e)) from None


def parse_vocabulary(text: str) -> List[str]:
    """'cat, dog|puppy, grass' -> ['cat', 'dog, puppy', 'grass']."""
    try:
        return parse_vocabulary_text(text, "--vocabulary")
    except ValueError as e:
        raise DemoError(str(e)) from None


def read_vocabulary_file(path: str) -> List[str]:
    """A JSON list of names, or a text file with one class per line (synonyms comma-separated)."""
    try:
        names = read_class_file(path, "--vocabulary-file")
    except (OSError, ValueError) as e:
        raise DemoError(str(e)) from None
    return _check_user_vocabulary(names, f"--vocabulary-file '{path}'", shared_synonyms_ok=True)


def dataset_vocabulary(name: str) -> List[str]:
    """Class names of a registered dataset: its exact name, or the datasets whose names start with it
    (e.g. "ade20k_150" for "ade20k_150_val_sem_seg") when they all share one vocabulary."""
    registered = DatasetCatalog.list()
    candidates = [name] if name in registered else sorted(n for n in registered if n.startswith(name))
    vocabularies = {}
    for candidate in candidates:
        classes = MetadataCatalog.get(candidate).get("stuff_classes", None)
        if classes:
            vocabularies.setdefault(tuple(classes), candidate)
    if len(vocabularies) != 1:
        with_names = sorted(n for n in registered if MetadataCatalog.get(n).get("stuff_classes", None))
        what = "no registered dataset with class names" if not vocabularies else "several vocabularies"
        raise DemoError(f"--dataset '{name}': {what} matches; registered: {', '.join(with_names) or 'none'}")
    names = list(next(iter(vocabularies)))
    try:
        return validate_vocabulary(names, f"--dataset '{name}'")
    except ValueError as e:
        raise DemoError(str(e)) from None


def expand_inputs(patterns: Sequence[str], extensions=IMAGE_EXTENSIONS, flag: str = "--input") -> List[str]:
    """Files, directories (their files with ``extensions``) and globs -> sorted unique paths."""
    paths = []
    what = "image" if flag == "--input" else "video"
    for pattern in patterns:
        if not glob.has_magic(pattern) and not os.path.exists(pattern):
            raise DemoError(f"{what} '{pattern}' does not exist")
        if os.path.isdir(pattern):
            paths += [
                os.path.join(pattern, f)
                for f in sorted(os.listdir(pattern))
                if f.lower().endswith(extensions) and os.path.isfile(os.path.join(pattern, f))
            ]
        elif os.path.isfile(pattern):
            paths.append(pattern)
        else:
            paths += sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
    unique = list(dict.fromkeys(paths))
    if not unique:
        raise DemoError(f"{flag} {' '.join(patterns)} matched no {what} files")
    return unique


# ---------------------------------------------------------------------------- main
def _output_stem(path: str, used: set) -> str:
    stem = os.path.splitext(os.path.basename(path))[0]
    candidate, k = stem, 1
    while candidate in used:
        candidate, k = f"{stem}_{k}", k + 1
    used.add(candidate)
    return candidate


def _settings(args, class_names: List[str], video: bool) -> dict:
    """What an output depends on: --skip-existing reuses an output only when these match."""
    settings = {"vocabulary": class_names, "threshold": args.threshold, "distractors": args.distractors,
                "config": args.config_file, "opts": list(args.opts)}
    if video:
        settings.update(every=args.every, max_frames=args.max_frames, temporal_smoothing=args.temporal_smoothing,
                        save_labels=args.save_labels)
    return settings


def _finished_record(output: str, stem: str, settings: dict, files: Sequence[str]) -> Optional[dict]:
    """The JSON record of a complete earlier output of ``stem`` made with ``settings``, else None. The JSON is
    written last and every file atomically, so a record marked complete means every file is whole."""
    try:
        with open(os.path.join(output, f"{stem}.json")) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    if record.get("settings") != settings or not record.get("complete", True):
        return None
    if not all(os.path.isfile(os.path.join(output, name)) for name in files):
        return None
    return record


def segment_images(segmenter, todo, class_names, options, args, settings, bar) -> Tuple[dict, list, dict]:
    """Segment (path, stem) pairs; returns the records by stem, the failures and the label-name table."""
    records, failures, table = {}, [], None
    tagged = ((item, item[0]) for item in todo)
    for item in segmenter.stream(tagged, class_names, batch_size=args.batch_size, skip_unreadable=True, **options):
        (path, stem), image, result = item.tag, item.image, item.result
        bar.update(1)
        if item.error is not None:
            logger.error(str(item.error))
            failures.append({"input": path, "error": str(item.error)})
            continue
        save_image(draw_result(image, result, args.alpha), os.path.join(args.output, f"{stem}.png"))
        save_labels(result, os.path.join(args.output, "labels", f"{stem}.png"))
        record = {
            "image": path,
            "height": int(image.shape[0]),
            "width": int(image.shape[1]),
            "overlay": f"{stem}.png",
            "labels": f"labels/{stem}.png",
            "pixel_shares": shares_record(result),
            "settings": settings,
        }
        save_json(record, os.path.join(args.output, f"{stem}.json"))  # last: marks the outputs complete
        records[stem] = record
        table = {str(k): v for k, v in result.name_table().items()}
    return records, failures, table


def segment_video(segmenter, reader: VideoReader, stem: str, class_names, options, args, settings, bar) -> dict:
    """One video -> <stem>.mp4 (overlay, inset legend, the input's size, frame rate / --every), <stem>.json
    (pixel shares per frame and over the clip), <stem>_classes.png and, with --save-labels, labels/<stem>/."""
    out = args.output
    labels_dir = os.path.join(out, "labels", stem)
    if args.save_labels:
        os.makedirs(labels_dir, exist_ok=True)
    indices, times, per_frame, table = [], [], {}, None
    with VideoWriter(os.path.join(out, f"{stem}.mp4"), reader.fps / args.every, (reader.width, reader.height)) as w:
        for frame in segmenter.video(reader, class_names, batch_size=args.batch_size,
                                     temporal_smoothing=args.temporal_smoothing, **options):
            shares = frame.result.pixel_shares()
            w.write(np.asarray(draw_result(frame.image, frame.result, args.alpha, legend="inset")))
            if args.save_labels:
                save_labels(frame.result, os.path.join(labels_dir, f"{frame.index:06d}.png"))
            indices.append(frame.index)
            times.append(round(frame.time, 4))
            for name, share in shares.items():
                per_frame.setdefault(name, []).append(round(share, 6))
            table = frame.result.name_table()
            bar.update(1)
    plot_class_shares(times, per_frame, os.path.join(out, f"{stem}_classes.png"),
                      title=f"{os.path.basename(reader.path)}: class share over time")
    record = {
        "video": reader.path,
        "height": reader.height,
        "width": reader.width,
        "fps": reader.fps,
        "output_fps": reader.fps / args.every,
        "codec": reader.codec,
        "declared_frames": reader.frame_count,
        "decoded_frames": reader.decoded,
        "truncated": reader.truncated,
        "overlay": f"{stem}.mp4",
        "plot": f"{stem}_classes.png",
        "labels": f"labels/{stem}/" if args.save_labels else None,
        "frames": indices,
        "times": times,
        "pixel_shares": {name: round(float(np.mean(v)), 6) for name, v in per_frame.items()},
        "pixel_shares_per_frame": per_frame,
        "label_names": {str(k): v for k, v in table.items()},
        "settings": settings,
        "complete": True,
    }
    save_json(record, os.path.join(out, f"{stem}.json"))  # last: marks the outputs complete
    return record


def run(args) -> int:
    if args.vocabulary is not None:
        class_names = parse_vocabulary(args.vocabulary)
    elif args.vocabulary_file is not None:
        class_names = read_vocabulary_file(args.vocabulary_file)
    else:
        class_names = dataset_vocabulary(args.dataset)
    if not args.input and not args.video_input:
        raise DemoError("give images with --input or videos with --video-input")
    paths = expand_inputs(args.input) if args.input else []
    video_paths = expand_inputs(args.video_input, VIDEO_EXTENSIONS, "--video-input") if args.video_input else []
    video_paths += [p for p in paths if p.lower().endswith(VIDEO_EXTENSIONS) and p not in video_paths]
    paths = [p for p in paths if not p.lower().endswith(VIDEO_EXTENSIONS)]  # a video named in --input is one
    if not 0.0 <= args.alpha <= 1.0:
        raise DemoError(f"--alpha must be in [0, 1], got {args.alpha}")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise DemoError(f"--threshold is a probability: give a value in [0, 1], got {args.threshold}")
    if not 0.0 <= args.temporal_smoothing < 1.0:
        raise DemoError(f"--temporal-smoothing must be in [0, 1) (0 = off), got {args.temporal_smoothing}")
    for flag, value in (("--every", args.every), ("--max-frames", args.max_frames), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise DemoError(f"{flag} must be >= 1, got {value}")
    if not video_paths and (args.temporal_smoothing or args.every != 1 or args.max_frames or args.save_labels):
        logger.warning("--temporal-smoothing, --every, --max-frames and --save-labels apply to videos only: ignored")
    try:  # every video is opened and its first frame decoded before the model is built
        readers = [VideoReader(p, args.every, args.max_frames) for p in video_paths]
    except VideoError as e:
        raise DemoError(str(e)) from None

    used = set()
    image_jobs = [(p, _output_stem(p, used)) for p in paths]
    video_jobs = [(r, _output_stem(r.path, used)) for r in readers]
    image_settings, video_settings = _settings(args, class_names, False), _settings(args, class_names, True)
    images, videos = {}, {}
    if args.skip_existing:  # reuse complete outputs made with the same settings
        for path, stem in list(image_jobs):
            record = _finished_record(args.output, stem, image_settings, [f"{stem}.png", f"labels/{stem}.png"])
            if record is not None:
                images[stem] = record
                image_jobs.remove((path, stem))
        for reader, stem in list(video_jobs):
            record = _finished_record(args.output, stem, video_settings, [f"{stem}.mp4", f"{stem}_classes.png"])
            if record is not None:
                videos[stem] = record
                video_jobs.remove((reader, stem))
        if images or videos:
            logger.info(f"--skip-existing: {len(images) + len(videos)} inputs already done in {args.output}")

    failures, table = [], None
    if image_jobs or video_jobs:
        cfg = setup_cfg(args)
        segmenter = Segmenter(cfg)
        options = dict(threshold=args.threshold, distractors=args.distractors)
        try:  # bad --distractors or a model without a declared score fail here, before any image is read
            segmenter.check(class_names, **options)
        except (KeyError, ValueError) as e:
            raise DemoError(str(e).strip("\"'")) from None
        os.makedirs(os.path.join(args.output, "labels"), exist_ok=True)
        total = len(image_jobs) + sum(len(r) for r, _ in video_jobs)
        unit = "frame" if video_jobs and not image_jobs else "image" if image_jobs and not video_jobs else "item"
        with tqdm(total=total or None, desc="segmenting", unit=unit, disable=total == 1, smoothing=0.1) as bar:
            if image_jobs:
                done, failures, table = segment_images(segmenter, image_jobs, class_names, options, args,
                                                       image_settings, bar)
                images.update(done)
            for reader, stem in video_jobs:
                videos[stem] = segment_video(segmenter, reader, stem, class_names, options, args, video_settings,
                                             bar)
                table = videos[stem]["label_names"]
        if table is not None:
            save_json(table, os.path.join(args.output, "label_names.json"))
    if table is None and os.path.isfile(os.path.join(args.output, "label_names.json")):
        with open(os.path.join(args.output, "label_names.json")) as f:
            table = json.load(f)
    summary = {"vocabulary": class_names, "threshold": args.threshold, "distractors": args.distractors,
               "label_names": table, "images": images, "videos": videos, "failed": failures}
    save_json(summary, os.path.join(args.output, "results.json"))
    logger.info(f"wrote {len(images)} images and {len(videos)} videos to {args.output}")
    if failures:
        logger.error(f"{len(failures)} of {len(paths) + len(video_paths)} inputs could not be read: "
                     f"{', '.join(f['input'] for f in failures)}")
    return 1 if failures and not images and not videos else 0


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args = get_parser().parse_args(argv)
    try:
        with exit_on_input_error("demo.py"):  # bad weights, config or data: one line, exit status 2
            return run(args)
    except DemoError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
