"""PAS-20 and PAS-20b (Pascal VOC 2012 validation) labels.

Reads   VOCdevkit/VOC2012/JPEGImages/*.jpg
        VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt     (the 1449 validation ids)
        VOCdevkit/VOC2012/SegmentationClassAug/<id>.png      (uint8: 0 background, 1..20, 255 boundary);
                                                             if absent, VOC2012/SegmentationClass/<id>.png
                                                             (the same ids for the validation images)
Writes  VOCdevkit/VOC2012/annotations_detectron2/val/<id>.png     PAS-20:  classes 0..19, background -> 255
        VOCdevkit/VOC2012/annotations_detectron2_bg/val/<id>.png  PAS-20b: classes 0..19, background -> 20
"""
import numpy as np

from _prepare_common import (LabelMapping, LabelSpec, class_names, dataset_root, parse_args, remap_conversion,
                             require, run_conversion)

CLASSES = {raw: raw - 1 for raw in range(1, 21)}
PAS20 = LabelMapping(CLASSES, fill=255, expected_unmapped=[0, 255])
PAS20B = LabelMapping({**CLASSES, 0: 20}, fill=255, expected_unmapped=[255])
VOC = "VOCtrainval_11-May-2012.tar from http://host.robots.ox.ac.uk/pascal/VOC/voc2012/, extracted into DETECTRON2_DATASETS"
AUG = ("SegmentationClassAug.zip (SBD-augmented labels, see datasets/README.md), unzipped into "
       "VOCdevkit/VOC2012/")


def main():
    args = parse_args(__doc__)
    voc = dataset_root() / "VOCdevkit" / "VOC2012"
    val_list = voc / "ImageSets" / "Segmentation" / "val.txt"
    require([(voc / "JPEGImages", VOC), (val_list, VOC)])
    labels = voc / "SegmentationClassAug"
    if not labels.is_dir():
        labels = voc / "SegmentationClass"
        print(f"  note: {voc / 'SegmentationClassAug'} not found; using {labels} (same validation labels)")
    ids = val_list.read_text().split()
    require([(labels / f"{i}.png", AUG) for i in ids])
    assert len(class_names("voc20.json")) == 20 and len(class_names("voc20b.json")) == 59
    conversions = []
    for name, mapping, folder, spec in [("PAS-20 val", PAS20, "annotations_detectron2", LabelSpec(20, 255, np.uint8)),
                                        ("PAS-20b val", PAS20B, "annotations_detectron2_bg",
                                         LabelSpec(21, 255, np.uint8))]:
        jobs = [(labels / f"{i}.png", voc / folder / "val" / f"{i}.png") for i in ids]
        conversions.append(remap_conversion(name, jobs, mapping, spec, official_count=1449))
    run_conversion(conversions, args)


if __name__ == "__main__":
    main()
