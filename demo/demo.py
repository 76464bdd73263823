"""Segment your own images with your own class names.

    python demo/demo.py --config-file configs/quickstart.yaml --input photo.jpg \
        --vocabulary "cat, dog, grass" --output out/ --opts MODEL.WEIGHTS model_final.pth

--input takes files, directories (their images, not recursive) and globs ("photos/**/*.jpg").
The vocabulary comes from --vocabulary (comma-separated classes; "dog|puppy" gives one class with
two synonyms), --vocabulary-file (a JSON list, or one class per line with comma-separated synonyms) or
--dataset (a registered benchmark's class names, e.g. "ade20k_150"). For each image the demo writes
<name>.png (the label map over the image, with a legend of the classes present), <name>.json (the share
of pixels of every class) and labels/<name>.png (the raw label map: an index PNG, uint8, or uint16 when
there are more than 255 classes); label_names.json is the index -> name table of those PNGs, and
results.json gathers all images.

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
from typing import Dict, List, Sequence

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

import dinov3seg  # noqa: E402,F401  (registers the model and datasets)
from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from PIL import Image  # noqa: E402,F401
from tqdm import tqdm  # noqa: E402

from dinov3seg.config import add_dinov3seg_config  # noqa: E402
from dinov3seg.data.datasets import read_class_file  # noqa: E402
from dinov3seg.errors import exit_on_input_error  # noqa: E402
from dinov3seg.data.vocabulary import check_user_vocabulary, validate_vocabulary  # noqa: E402
from dinov3seg.data.vocabulary import parse_vocabulary as parse_vocabulary_text  # noqa: E402
from dinov3seg.inference.predictor import read_image_rgb  # noqa: E402
from dinov3seg.inference.segmenter import KNOWN_VOCABULARIES, Segmenter  # noqa: E402
from dinov3seg.inference.visualize import draw_result, save_label_image, shares_record  # noqa: E402

logger = logging.getLogger("dinov3seg.demo")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")


class DemoError(Exception):
    """A bad input: reported as one clear line, exit status 2."""


# ---------------------------------------------------------------------------- arguments
def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE", help="model config (YAML)")
    parser.add_argument("--input", required=True, nargs="+", help="image files, directories or globs")
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


def expand_inputs(patterns: Sequence[str]) -> List[str]:
    """Files, directories (their images) and globs -> sorted unique image paths."""
    paths = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            paths += [
                os.path.join(pattern, f)
                for f in sorted(os.listdir(pattern))
                if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(pattern, f))
            ]
        elif os.path.isfile(pattern):
            paths.append(pattern)
        else:
            paths += sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
    unique = list(dict.fromkeys(paths))
    if not unique:
        raise DemoError(f"--input {' '.join(patterns)} matched no image files")
    return unique


# ---------------------------------------------------------------------------- main
def _output_stem(path: str, used: set) -> str:
    stem = os.path.splitext(os.path.basename(path))[0]
    candidate, k = stem, 1
    while candidate in used:
        candidate, k = f"{stem}_{k}", k + 1
    used.add(candidate)
    return candidate


def run(args) -> int:
    if args.vocabulary is not None:
        class_names = parse_vocabulary(args.vocabulary)
    elif args.vocabulary_file is not None:
        class_names = read_vocabulary_file(args.vocabulary_file)
    else:
        class_names = dataset_vocabulary(args.dataset)
    paths = expand_inputs(args.input)
    if not 0.0 <= args.alpha <= 1.0:
        raise DemoError(f"--alpha must be in [0, 1], got {args.alpha}")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise DemoError(f"--threshold is a probability: give a value in [0, 1], got {args.threshold}")

    cfg = setup_cfg(args)
    segmenter = Segmenter(cfg)
    options = dict(threshold=args.threshold, distractors=args.distractors)
    try:  # bad --distractors or a model without a declared score fail here, before any image is read
        segmenter.check(class_names, **options)
    except (KeyError, ValueError) as e:
        raise DemoError(str(e).strip("\"'")) from None
    os.makedirs(os.path.join(args.output, "labels"), exist_ok=True)

    results, failures, used, table = {}, [], set(), None
    for path in tqdm(paths, desc="segmenting", unit="image", disable=len(paths) < 2):
        try:
            image = read_image_rgb(path)
        except ValueError as e:
            logger.error(str(e))
            failures.append(path)
            continue
        result = segmenter.segment(image, class_names, **options)
        stem = _output_stem(path, used)
        draw_result(image, result, args.alpha).save(os.path.join(args.output, f"{stem}.png"))
        save_label_image(result, os.path.join(args.output, "labels", f"{stem}.png"))
        table = {str(k): v for k, v in result.name_table().items()}
        record = {
            "image": path,
            "height": int(image.shape[0]),
            "width": int(image.shape[1]),
            "overlay": f"{stem}.png",
            "labels": f"labels/{stem}.png",
            "pixel_shares": shares_record(result),
        }
        with open(os.path.join(args.output, f"{stem}.json"), "w") as f:
            json.dump(record, f, indent=2)
        results[stem] = record
    if table is not None:
        with open(os.path.join(args.output, "label_names.json"), "w") as f:
            json.dump(table, f, indent=2)
    summary = {"vocabulary": class_names, "threshold": args.threshold, "distractors": args.distractors,
               "label_names": table, "images": results, "unreadable": failures}
    with open(os.path.join(args.output, "results.json"), "w") as f:
        json.dump(summary, f, indent=2)
    logger.info(f"wrote {len(results)} overlays and label maps to {args.output}")
    if failures:
        logger.error(f"{len(failures)} of {len(paths)} inputs could not be read: {', '.join(failures)}")
        return 1
    return 0


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
