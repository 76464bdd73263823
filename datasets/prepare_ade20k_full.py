"""A-847 (ADE20K full, 847 most frequent classes) validation set from the ADE20K_2021_17_01 release.

Reads   ADE20K_2021_17_01/index_ade20k.pkl                     (folder / filename / objectnames lists)
        ADE20K_2021_17_01/images/ADE/validation/**/ADE_val_*.jpg and *_seg.png
            (object class of a pixel = R // 10 * 256 + G of the _seg.png)
Writes  ADE20K_2021_17_01/images_detectron2/validation/ADE_val_*.jpg
        ADE20K_2021_17_01/annotations_detectron2/validation/ADE_val_*.tif   (uint16: 0..846, ignore 65535)

Like the reference preprocessing of this benchmark, images whose short side exceeds 512 are resized to a
short side of 512 (bilinear for the image, nearest for the labels); smaller images are copied unchanged.
The 847 classes are ordered by frequency; datasets/ade847_ids.json holds their ADE20K object ids.
"""
import json
import pickle
import shutil
from functools import partial
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from _prepare_common import (REPO_DATASETS, Conversion, LabelMapping, LabelSpec, Stats, class_names,
                             dataset_root, parse_args, require, run_conversion, save_atomic, save_label)

RELEASE = "ADE20K_2021_17_01"
SHORT_SIDE = 512
HINT = (f"the {RELEASE} release (zip) from https://ade20k.csail.mit.edu/request_data/ (free registration), "
        "unzipped into DETECTRON2_DATASETS")


def convert(job, mapping: LabelMapping) -> Stats:
    image_path, out_image, out_label = job
    with Image.open(image_path.with_name(image_path.stem + "_seg.png")) as seg:
        seg = np.array(seg.convert("RGB"), dtype=np.int32)
    label, unexpected = mapping(seg[..., 0] // 10 * 256 + seg[..., 1])
    h, w = label.shape
    if min(h, w) > SHORT_SIDE:
        size = (round(w * SHORT_SIDE / h), SHORT_SIDE) if w >= h else (SHORT_SIDE, round(h * SHORT_SIDE / w))
        with Image.open(image_path) as img:
            image = cv2.resize(np.array(img.convert("RGB")), size, interpolation=cv2.INTER_LINEAR)
        label = cv2.resize(label, size, interpolation=cv2.INTER_NEAREST)
        save_atomic(out_image, Image.fromarray(image))
    else:
        out_image.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_image.with_name(out_image.stem + ".partial" + out_image.suffix)
        shutil.copyfile(image_path, tmp)
        tmp.replace(out_image)
    save_label(out_label, label)
    return Stats.of(label, unexpected)


def main():
    args = parse_args(__doc__)
    datasets = dataset_root()
    root = datasets / RELEASE
    require([(root / "index_ade20k.pkl", HINT), (root / "images" / "ADE" / "validation", HINT)])
    with open(root / "index_ade20k.pkl", "rb") as f:
        index = pickle.load(f)
    ade_ids = json.loads((REPO_DATASETS / "ade847_ids.json").read_text())
    assert len(ade_ids) == len(class_names("ade847.json")) == 847
    # Ids of the other ADE20K classes (and 0 = unlabeled) are expected and become ignore.
    mapping = LabelMapping({ade: train for train, ade in enumerate(ade_ids)}, fill=65535, dtype=np.uint16,
                           expected_unmapped=range(len(index["objectnames"]) + 1), size=65536)

    jobs = []
    for folder, filename in zip(index["folder"], index["filename"]):
        if not filename.startswith("ADE_val_"):
            continue
        folder = Path(folder)  # the index stores "ADE20K_2021_17_01/images/ADE/validation/<scene>"
        image = (datasets / folder if folder.parts[0] == RELEASE else root / folder) / filename
        jobs.append((image, root / "images_detectron2" / "validation" / filename,
                     root / "annotations_detectron2" / "validation" / (Path(filename).stem + ".tif")))
    require([p for image, _, _ in jobs for p in [(image, HINT), (image.with_name(image.stem + "_seg.png"), HINT)]])
    run_conversion([Conversion("A-847 validation", jobs, partial(convert, mapping=mapping),
                               outputs=lambda job: [job[2], job[1]], labels=LabelSpec(847, 65535, np.uint16),
                               official_count=2000)], args)


if __name__ == "__main__":
    main()
