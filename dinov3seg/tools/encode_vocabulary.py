"""Encode class names ahead into the text-embedding disk cache, so the demo, the web app and evaluation start warm.

    python -m dinov3seg.tools.encode_vocabulary ade150 coco_stuff pc59 voc20
    python -m dinov3seg.tools.encode_vocabulary my_classes.txt --config-file configs/vitl_384.yaml --opts ...

Each name is a known vocabulary (ade150, coco_stuff, pc59, voc20), a registered dataset's name, or a class-name
file (a JSON list, or one class per line with comma-separated synonyms). An embedding depends on the text weights
and the prompt templates, both read from the config (default: the training-free dinov3.txt model, whose text
weights and 80 templates the trained models share when they use those templates): encode with the config and
weight files you will segment with. Only names not yet in the cache are encoded; the cache is
MODEL.DINOV3SEG.TEXT_CACHE_DIR ("auto": $DINOV3SEG_CACHE_DIR, $XDG_CACHE_HOME/dinov3seg or ~/.cache/dinov3seg).
"""
import argparse
import logging
import os
import sys
import time
from typing import List

import torch

from ..errors import VocabularyError, exit_on_input_error


def vocabulary(name: str) -> List[str]:
    """Class names of a known vocabulary, a registered dataset or a class-name file."""
    from ..data.datasets import read_class_file
    from ..inference.segmenter import known_vocabulary

    if os.path.isfile(name):
        return read_class_file(name, name)
    try:
        return known_vocabulary(name)
    except KeyError as e:
        raise VocabularyError(f"{e.args[0]} Or give a class-name file (no file '{name}' exists).") from None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("vocabularies", nargs="+", help="known vocabularies, dataset names or class-name files")
    parser.add_argument("--config-file", default="dinotxt_zeroshot", help="config name or YAML path")
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    with exit_on_input_error("encode_vocabulary"):
        from ..inference.segmenter import Segmenter

        names = {name: vocabulary(name) for name in args.vocabularies}  # a bad name fails before the model loads
        embedder = Segmenter(args.config_file, opts=args.opts).model.text_embedder
        if not embedder.cache_dir:
            raise ValueError("MODEL.DINOV3SEG.TEXT_CACHE_DIR is '' (memory only): set it to 'auto' or a folder")
        for name, classes in names.items():
            encoded, read, start = embedder.num_encoded_classes, embedder.num_disk_hits, time.perf_counter()
            with torch.no_grad():
                embedder(classes)
            print(f"{name}: {len(classes)} classes, {embedder.num_encoded_classes - encoded} encoded, "
                  f"{embedder.num_disk_hits - read} already on disk ({time.perf_counter() - start:.1f} s)")
        print(f"cache: {embedder.disk_folder()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
