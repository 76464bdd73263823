"""A-150 (ADE20K SceneParsing, 150 classes) validation labels from ADEChallengeData2016.

Reads   ADEChallengeData2016/images/validation/*.jpg
        ADEChallengeData2016/annotations/validation/*.png   (uint8: 0 = other, 1..150 = classes)
Writes  ADEChallengeData2016/annotations_detectron2/validation/*.png   (uint8: 0..149, 255 ignore)
"""
import numpy as np

from _prepare_common import (LabelMapping, LabelSpec, class_names, dataset_root, remap_conversion,
                             parse_args, remap_jobs, require, run_conversion)

MAPPING = LabelMapping({raw: raw - 1 for raw in range(1, 151)}, fill=255, expected_unmapped=[0])


def main():
    args = parse_args(__doc__)
    root = dataset_root() / "ADEChallengeData2016"
    hint = "ADEChallengeData2016.zip from http://sceneparsing.csail.mit.edu, unzipped into DETECTRON2_DATASETS"
    require([(root / "images" / "validation", hint), (root / "annotations" / "validation", hint)])
    assert len(class_names("ade150.json")) == 150
    jobs = remap_jobs(root / "annotations" / "validation", "*.png",
                      root / "annotations_detectron2" / "validation", ".png")
    run_conversion([remap_conversion("A-150 validation", jobs, MAPPING, LabelSpec(150, 255, np.uint8),
                                     official_count=2000)], args)


if __name__ == "__main__":
    main()
