"""COCO-Stuff-171 (train + val) from the official stuffthingmaps.

Reads   coco-stuff/images/{train2017,val2017}/*.jpg        (COCO 2017 images)
        coco-stuff/annotations/{train2017,val2017}/*.png   (stuffthingmaps_trainval2017.zip: raw ids
                                                            0..181 = COCO category id - 1, 255 unlabeled)
Writes  coco-stuff/annotations_detectron2/{train2017,val2017}/*.png  (uint8, train ids 0..170, 255 ignore)

The 171 classes are the 80 COCO things and the 91 stuff classes, in COCO id order (datasets/coco171.json).
"""
import numpy as np

from _prepare_common import (LabelMapping, LabelSpec, class_names, dataset_root, remap_conversion,
                             parse_args, remap_jobs, require, run_conversion)

# COCO category ids (1-based) that the 2017 annotations do not use.
UNUSED_THING_IDS = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
# Raw (0-based) ids of the 171 classes, in train-id order: 80 things, then 91 stuff classes.
RAW_IDS = [i - 1 for i in range(1, 91) if i not in UNUSED_THING_IDS] + list(range(91, 182))
MAPPING = LabelMapping({raw: train for train, raw in enumerate(RAW_IDS)}, fill=255, expected_unmapped=[255])
OFFICIAL_COUNTS = {"train2017": 118287, "val2017": 5000}


def main():
    args = parse_args(__doc__)
    root = dataset_root() / "coco-stuff"
    images = "COCO 2017 images: http://images.cocodataset.org/zips/{}.zip, unzipped into coco-stuff/images/"
    maps = ("stuffthingmaps_trainval2017.zip from https://github.com/nightrome/cocostuff, "
            "unzipped into coco-stuff/annotations/")
    require([(root / "images" / s, images.format(s)) for s in OFFICIAL_COUNTS]
            + [(root / "annotations" / s, maps) for s in OFFICIAL_COUNTS])
    assert len(class_names("coco171.json")) == len(RAW_IDS) == 171
    run_conversion([
        remap_conversion(f"COCO-Stuff {split}",
                         remap_jobs(root / "annotations" / split, "*.png",
                                    root / "annotations_detectron2" / split, ".png"),
                         MAPPING, LabelSpec(171, 255, np.uint8), official_count=count)
        for split, count in OFFICIAL_COUNTS.items()], args)


if __name__ == "__main__":
    main()
