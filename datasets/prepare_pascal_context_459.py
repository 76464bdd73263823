"""PC-459 (Pascal Context, all 459 classes) validation labels from the full-context .mat files.

Reads   VOCdevkit/VOC2010/JPEGImages/*.jpg          (VOC2010 trainval images)
        VOCdevkit/VOC2010/trainval/<id>.mat         (trainval.tar.gz: LabelMap, 0 = unlabeled, 1..459)
        VOCdevkit/VOC2010/labels.txt                (same archive: "<id>: <name>", 459 lines)
        datasets/pascal_context_val.txt             (the 5104 validation ids; shipped in this repository)
Writes  VOCdevkit/VOC2010/annotations_detectron2/pc459_val/<id>.tif   (uint16: 0..458, ignore 65535)

Unlabeled pixels (0) become 65535, not 459: 459 is no class, and a registered ignore value of 459 would
mix those pixels into the confusion matrix.
"""
import re
from pathlib import Path

import numpy as np

from _prepare_common import (REPO_DATASETS, LabelMapping, LabelSpec, class_names, dataset_root,
                             parse_args, remap_conversion, require, run_conversion)

MAPPING = LabelMapping({raw: raw - 1 for raw in range(1, 460)}, fill=65535, dtype=np.uint16,
                       expected_unmapped=[0], size=65536)
ARCHIVE = ("trainval.tar.gz (459-class full context) from https://www.cs.stanford.edu/~roozbeh/pascal-context/ "
           "(mirror: https://roozbehm.info/pascal-context/), extracted into VOCdevkit/VOC2010/")


def check_labels_txt(path):
    """labels.txt must list the 459 classes of datasets/pc459.json, in the same order."""
    names = dict(re.match(r"\s*(\d+)\s*:\s*(.*?)\s*$", line).groups() for line in path.read_text().splitlines()
                 if ":" in line)
    ours = class_names("pc459.json")
    if sorted(map(int, names)) != list(range(1, 460)):
        raise SystemExit(f"{path} should number 459 classes 1..459; found {len(names)}. Is it the full-context "
                         f"labels.txt from {ARCHIVE}?")
    differ = [(i, names[str(i)], ours[i - 1]) for i in range(1, 460) if names[str(i)] != ours[i - 1]]
    if differ:
        print(f"  note: {len(differ)} names in labels.txt differ from datasets/pc459.json, e.g. {differ[:3]}")


def main():
    args = parse_args(__doc__, [("--val-list", dict(default=str(REPO_DATASETS / "pascal_context_val.txt"),
                                                     help="validation ids, one per line (default: the shipped "
                                                          "5104-id list)"))])
    voc = dataset_root() / "VOCdevkit" / "VOC2010"
    require([(voc / "JPEGImages", "VOCtrainval_03-May-2010.tar from http://host.robots.ox.ac.uk/pascal/VOC/voc2010/"),
             (voc / "trainval", ARCHIVE), (voc / "labels.txt", ARCHIVE)])
    check_labels_txt(voc / "labels.txt")
    ids = Path(args.val_list).read_text().split()
    out_dir = voc / "annotations_detectron2" / "pc459_val"
    require([(voc / "trainval" / f"{i}.mat", ARCHIVE) for i in ids])
    jobs = [(voc / "trainval" / f"{i}.mat", out_dir / f"{i}.tif") for i in ids]
    run_conversion([remap_conversion("PC-459 val", jobs, MAPPING, LabelSpec(459, 65535, np.uint16),
                                     official_count=5104)], args)


if __name__ == "__main__":
    main()
