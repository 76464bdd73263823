"""PC-59 (Pascal Context, 59 most frequent classes) validation labels from trainval_merged.json.

Reads   VOCdevkit/VOC2010/JPEGImages/*.jpg
        VOCdevkit/VOC2010/trainval_merged.json   (Detail-API format: "images" with "phase", "file_name",
                                                  "height", "width"; "annos_segmentation" with RLE masks
                                                  and 459-class "category_id")
Writes  VOCdevkit/VOC2010/annotations_detectron2/pc59_val/<id>.png   (uint8: 0..58, 255 ignore)

Pixels covered by no mask or by one of the other 400 classes are ignored. Masks are painted in file order.
"""
import json
from collections import defaultdict
from functools import partial
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from _prepare_common import (Conversion, LabelMapping, LabelSpec, Stats, class_names, dataset_root, parse_args,
                             require, run_conversion, save_label)

# The 459-class ids (lines of labels.txt) of the 59 classes, in the order of datasets/pc59.json.
PC59_IDS = [2, 9, 18, 19, 22, 23, 25, 31, 33, 34, 44, 45, 46, 59, 65, 68, 72, 80, 85, 98, 104, 105, 113, 115,
            144, 158, 159, 162, 187, 189, 207, 220, 232, 258, 259, 260, 284, 295, 296, 308, 324, 326, 347, 349,
            354, 355, 360, 366, 368, 397, 415, 416, 420, 424, 427, 440, 445, 454, 458]
MAPPING = LabelMapping({raw: train for train, raw in enumerate(PC59_IDS)}, fill=255,
                       expected_unmapped=range(460), size=65536)
HINT = ("trainval_merged.json from https://codalabuser.blob.core.windows.net/public/trainval_merged.json "
        "(Pascal Context, Detail API format), placed in VOCdevkit/VOC2010/")


def rasterise(height: int, width: int, annotations) -> np.ndarray:
    """459-class id map (0 = unlabeled) painted from the RLE / polygon masks of one image."""
    raw = np.zeros((height, width), dtype=np.int64)
    for ann in annotations:
        seg = ann["segmentation"]
        if isinstance(seg, list) or isinstance(seg.get("counts"), list):  # polygons or uncompressed RLE
            seg = mask_utils.merge(mask_utils.frPyObjects(seg, height, width)) if isinstance(seg, list) \
                else mask_utils.frPyObjects(seg, height, width)
        raw[mask_utils.decode(seg).astype(bool)] = ann["category_id"]
    return raw


def convert(job, mapping: LabelMapping) -> Stats:
    image, annotations, out_path = job
    label, unexpected = mapping(rasterise(image["height"], image["width"], annotations))
    save_label(out_path, label)
    return Stats.of(label, unexpected)


def main():
    args = parse_args(__doc__)
    voc = dataset_root() / "VOCdevkit" / "VOC2010"
    require([(voc / "JPEGImages", "VOCtrainval_03-May-2010.tar from http://host.robots.ox.ac.uk/pascal/VOC/voc2010/"),
             (voc / "trainval_merged.json", HINT)])
    assert len(class_names("pc59.json")) == len(PC59_IDS) == 59
    print("loading", voc / "trainval_merged.json")
    data = json.loads((voc / "trainval_merged.json").read_text())
    images = {im["image_id"]: im for im in data["images"] if im["phase"] == "val"}
    annotations = defaultdict(list)
    for ann in data["annos_segmentation"]:
        if ann["image_id"] in images:
            annotations[ann["image_id"]].append(ann)
    out_dir = voc / "annotations_detectron2" / "pc59_val"
    jobs = [(im, annotations[i], out_dir / (Path(im["file_name"]).stem + ".png")) for i, im in images.items()]
    run_conversion([Conversion("PC-59 val", jobs, partial(convert, mapping=MAPPING), outputs=lambda job: [job[2]],
                               labels=LabelSpec(59, 255, np.uint8), official_count=5104)], args)


if __name__ == "__main__":
    main()
