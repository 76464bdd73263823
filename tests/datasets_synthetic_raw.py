"""Tiny synthetic copies of the official raw releases, in their on-disk formats, for the dataset tests.

Each ``make_*`` writes a few small images under ``root`` (a $DETECTRON2_DATASETS folder) and returns
``{output label path (relative to root): expected label array}`` — what the prepare script must write,
derived here independently of the scripts from the documented id conventions.
"""
import json
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Dict

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
H, W = 12, 16


def _image(path: Path, h: int = H, w: int = W) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(path)))
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path, quality=90)


def _blocks(values, h: int = H, w: int = W) -> np.ndarray:
    """An h x w map cut into vertical stripes, one per value (every value appears)."""
    stripes = np.array_split(np.arange(w), len(values))
    out = np.zeros((h, w), dtype=np.int64)
    for cols, v in zip(stripes, values):
        out[:, cols] = v
    return out


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def make_coco_stuff(root: Path) -> Dict[str, np.ndarray]:
    # raw id (COCO id - 1) -> train id: person 0 -> 0, 11 (unused id 12) -> ignore, stop sign 12 -> 11,
    # first stuff class 91 (banner) -> 80, last 181 (wood) -> 170, 255 unlabeled -> 255.
    pairs = [(0, 0), (11, 255), (12, 11), (91, 80), (181, 170), (255, 255)]
    expected = {}
    for split in ("train2017", "val2017"):
        for k in range(2):
            stem = f"{split}_{k:012d}"
            raw = _blocks([p[0] for p in np.roll(pairs, k, axis=0)])
            _image(root / f"coco-stuff/images/{split}/{stem}.jpg")
            _png(root / f"coco-stuff/annotations/{split}/{stem}.png", raw.astype(np.uint8))
            lut = dict(pairs)
            expected[f"coco-stuff/annotations_detectron2/{split}/{stem}.png"] = np.vectorize(lut.get)(raw)
    return expected


def make_ade20k_150(root: Path) -> Dict[str, np.ndarray]:
    pairs = [(0, 255), (1, 0), (2, 1), (150, 149)]
    expected = {}
    for k in range(3):
        stem = f"ADE_val_{k + 1:08d}"
        raw = _blocks([p[0] for p in np.roll(pairs, k, axis=0)])
        _image(root / f"ADEChallengeData2016/images/validation/{stem}.jpg")
        _png(root / f"ADEChallengeData2016/annotations/validation/{stem}.png", raw.astype(np.uint8))
        expected[f"ADEChallengeData2016/annotations_detectron2/validation/{stem}.png"] = \
            np.vectorize(dict(pairs).get)(raw)
    return expected


def ade_seg_png(object_ids: np.ndarray) -> np.ndarray:
    """The ADE20K *_seg.png encoding: R = id // 256 * 10, G = id % 256 (B holds instances)."""
    seg = np.zeros(object_ids.shape + (3,), dtype=np.uint8)
    seg[..., 0] = object_ids // 256 * 10
    seg[..., 1] = object_ids % 256
    seg[..., 2] = 7
    return seg


def make_ade20k_full(root: Path) -> Dict[str, np.ndarray]:
    # ADE object id -> train id: wall 2978 -> 0, building 312 -> 1, adding machine 3148 -> 846,
    # 0 (unlabeled) and 5 (a class outside the 847) -> 65535.
    pairs = [(2978, 0), (312, 1), (3148, 846), (0, 65535), (5, 65535)]
    release = root / "ADE20K_2021_17_01"
    folders, filenames, expected = [], [], {}
    entries = [("validation/urban/street", "ADE_val_00000001.jpg", (H, W)),
               ("validation/home/kitchen", "ADE_val_00000002.jpg", (H, W)),
               ("validation/home/bedroom", "ADE_val_00000003.jpg", (520, 640)),  # resized to short side 512
               ("training/urban/street", "ADE_train_00000001.jpg", (H, W))]  # not converted
    for k, (folder, filename, (h, w)) in enumerate(entries):
        raw = _blocks([p[0] for p in np.roll(pairs, k, axis=0)], h, w)
        image = release / "images/ADE" / folder / filename
        _image(image, h, w)
        _png(image.with_name(image.stem + "_seg.png"), ade_seg_png(raw))
        folders.append(f"ADE20K_2021_17_01/images/ADE/{folder}")
        filenames.append(filename)
        if filename.startswith("ADE_val_") and h < 512:
            expected[f"ADE20K_2021_17_01/annotations_detectron2/validation/{image.stem}.tif"] = \
                np.vectorize(dict(pairs).get)(raw)
    index = {"folder": folders, "filename": filenames, "objectnames": [f"object {i}" for i in range(3688)]}
    with open(release / "index_ade20k.pkl", "wb") as f:
        pickle.dump(index, f)
    return expected


def make_pascal_context(root: Path) -> Dict[str, np.ndarray]:
    """VOC2010 images, trainval_merged.json (PC-59) and trainval/*.mat + labels.txt (PC-459)."""
    from pycocotools import mask as mask_utils
    from scipy.io import savemat

    voc = root / "VOCdevkit/VOC2010"
    ids = ["2008_000002", "2008_000003", "2008_000007"]  # the last is a training image
    images, annotations, expected = [], [], {}
    for k, image_id in enumerate(ids):
        _image(voc / f"JPEGImages/{image_id}.jpg")
        phase = "val" if k < 2 else "train"
        images.append(dict(image_id=k, file_name=f"{image_id}.jpg", height=H, width=W, phase=phase))
        # PC-59: aeroplane (2) on the left half, wood (458) from column 6 on, painted later (wins),
        # accordion (1, not in the 59) in the top row; rows 0-1 stay
        # uncovered (ignore).
        expect = np.full((H, W), 255)
        for category, (rows, cols), train_id in [(2, (slice(2, H), slice(0, W // 2)), 0),
                                                 (458, (slice(2, H), slice(W // 2 - 2, W)), 58),
                                                 (1, (slice(0, 1), slice(0, W)), 255)]:
            mask = np.zeros((H, W), dtype=np.uint8)
            mask[rows, cols] = 1
            rle = mask_utils.encode(np.asfortranarray(mask))
            rle["counts"] = rle["counts"].decode("ascii")
            annotations.append(dict(image_id=k, category_id=category, segmentation=rle))
            expect[rows, cols] = train_id
        if phase == "val":
            expected[f"VOCdevkit/VOC2010/annotations_detectron2/pc59_val/{image_id}.png"] = expect
        # PC-459: LabelMap 1..459 -> 0..458, 0 (unlabeled) -> 65535.
        label_map = _blocks(np.roll([0, 1, 285, 459], k))
        savemat(_mkdir(voc / "trainval") / f"{image_id}.mat", {"LabelMap": label_map.astype(np.uint16)})
        expected[f"VOCdevkit/VOC2010/annotations_detectron2/pc459_val/{image_id}.tif"] = \
            np.where(label_map == 0, 65535, label_map - 1)
    merged = dict(images=images, annos_segmentation=annotations,
                  categories=[dict(category_id=i, name=f"class {i}") for i in range(1, 460)])
    (voc / "trainval_merged.json").write_text(json.dumps(merged))
    names = json.loads((REPO / "datasets/pc459.json").read_text())
    (voc / "labels.txt").write_text("".join(f"{i}: {n}\n" for i, n in enumerate(names, 1)))
    (root / "pc459_val_ids.txt").write_text("\n".join(ids) + "\n")  # passed with --val-list
    return expected


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def make_voc(root: Path) -> Dict[str, np.ndarray]:
    voc = root / "VOCdevkit/VOC2012"
    ids = ["2007_000033", "2007_000042"]
    _mkdir(voc / "ImageSets/Segmentation")
    (voc / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids) + "\n")
    expected = {}
    for k, image_id in enumerate(ids):
        _image(voc / f"JPEGImages/{image_id}.jpg")
        raw = _blocks(np.roll([0, 1, 15, 20, 255], k))
        _png(voc / f"SegmentationClassAug/{image_id}.png", raw.astype(np.uint8))
        classes = np.where((raw >= 1) & (raw <= 20), raw - 1, 255)
        expected[f"VOCdevkit/VOC2012/annotations_detectron2/val/{image_id}.png"] = classes
        expected[f"VOCdevkit/VOC2012/annotations_detectron2_bg/val/{image_id}.png"] = np.where(raw == 0, 20, classes)
    return expected


# prepare script -> (raw-release writer, extra arguments)
RELEASES = {
    "prepare_coco_stuff.py": (make_coco_stuff, []),
    "prepare_ade20k_150.py": (make_ade20k_150, []),
    "prepare_ade20k_full.py": (make_ade20k_full, []),
    "prepare_pascal_context_59.py": (make_pascal_context, []),
    "prepare_pascal_context_459.py": (make_pascal_context, ["--val-list", "{root}/pc459_val_ids.txt"]),
    "prepare_voc.py": (make_voc, []),
}


def run_prepare(script: str, root: Path, *extra: str) -> subprocess.CompletedProcess:
    """Run ``datasets/<script>`` as a user would, with DETECTRON2_DATASETS=root."""
    args = [a.format(root=root) for a in RELEASES[script][1]] + list(extra)
    env = {"DETECTRON2_DATASETS": str(root), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, str(REPO / "datasets" / script), "--workers", "2", *args],
                          env=env, capture_output=True, text=True, timeout=300)


def make_all(root: Path) -> Dict[str, np.ndarray]:
    """Every raw release, prepared; returns the expected labels of all of them."""
    expected = {}
    for script, (make, _) in RELEASES.items():
        if script != "prepare_pascal_context_459.py":  # shares its raw release with PC-59
            expected.update(make(root))
    for script in RELEASES:
        result = run_prepare(script, root)
        assert result.returncode == 0, f"{script} failed:\n{result.stdout}\n{result.stderr}"
    return expected
