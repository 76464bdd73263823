"""A synthetic open-vocabulary dataset for the quickstart, generated on first use.

Each class is a colour plus an oriented stripe texture; an image is a background class with
a few ellipses and rectangles of other classes. The training split uses only the SEEN classes
(labels index the seen vocabulary); the validation split uses all classes (labels index the
full vocabulary), so seen and unseen classes can be scored separately. Files are written in
Detectron2's sem-seg layout: ``<root>/images/<split>/*.jpg``, ``<root>/labels/<split>/*.png``
(uint8, 255 = ignore), plus ``classes_<split>.json`` and ``split.json``.
"""
import json
import os
from pathlib import Path
from typing import Dict, List

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

CLASSES = ["grass", "sky", "water", "sand", "brick wall", "snow", "road", "tree",
           "rock", "wood", "carpet", "fence"]
SEEN = CLASSES[:8]
UNSEEN = CLASSES[8:]
SPLITS = {"train": dict(num_images=160, classes=SEEN, seed=0),
          "val": dict(num_images=24, classes=CLASSES, seed=1)}
IMAGE_SIZE = 160
IGNORE_LABEL = 255
VERSION = 1  # bump when the generator changes, to regenerate existing folders


def default_root() -> Path:
    return Path(os.getenv("DETECTRON2_DATASETS", "datasets")) / "synthetic_ov"


def class_appearance(index: int) -> Dict[str, np.ndarray]:
    """A fixed colour and stripe orientation/frequency per class (deterministic in the index)."""
    rng = np.random.default_rng(1000 + index)
    return dict(colour=rng.uniform(30, 225, size=3), angle=rng.uniform(0, np.pi),
                frequency=rng.uniform(0.15, 0.6))


def render(label: np.ndarray, class_ids: List[int], rng: np.random.Generator) -> np.ndarray:
    """Paint an RGB uint8 image for a label map whose values index ``class_ids``."""
    h, w = label.shape
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.zeros((h, w, 3))
    for local, global_id in enumerate(class_ids):
        mask = label == local
        if not mask.any():
            continue
        a = class_appearance(global_id)
        stripes = np.sin(a["frequency"] * (xx * np.cos(a["angle"]) + yy * np.sin(a["angle"])))
        image[mask] = a["colour"] + 25 * stripes[mask, None]
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def random_label(num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """A background class and 2-4 shapes (ellipses or rectangles) of random classes."""
    label = np.full((IMAGE_SIZE, IMAGE_SIZE), rng.integers(num_classes), dtype=np.uint8)
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE]
    for _ in range(rng.integers(2, 5)):
        cy, cx = rng.uniform(20, IMAGE_SIZE - 20, size=2)
        ry, rx = rng.uniform(18, 50, size=2)
        if rng.random() < 0.5:
            shape = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        else:
            shape = (abs(yy - cy) <= ry) & (abs(xx - cx) <= rx)
        label[shape] = rng.integers(num_classes)
    return label


def generate(root: Path) -> None:
    """Write both splits under ``root`` (skipped when a complete copy of this version exists)."""
    stamp = root / "split.json"
    if stamp.is_file() and json.loads(stamp.read_text()).get("version") == VERSION:
        return
    for split, spec in SPLITS.items():
        rng = np.random.default_rng(spec["seed"])
        class_ids = [CLASSES.index(c) for c in spec["classes"]]
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(spec["num_images"]):
            label = random_label(len(class_ids), rng)
            Image.fromarray(render(label, class_ids, rng)).save(root / "images" / split / f"{i:05d}.jpg", quality=95)
            Image.fromarray(label).save(root / "labels" / split / f"{i:05d}.png")
        (root / f"classes_{split}.json").write_text(json.dumps(spec["classes"]))
    stamp.write_text(json.dumps({"version": VERSION, "seen": SEEN, "unseen": UNSEEN}))


def load_split(root: Path, split: str) -> List[dict]:
    """Detectron2 dataset dicts of one split, generating the dataset first if needed."""
    generate(root)
    images = sorted((root / "images" / split).glob("*.jpg"))
    return [dict(file_name=str(p), sem_seg_file_name=str(root / "labels" / split / f"{p.stem}.png"),
                 height=IMAGE_SIZE, width=IMAGE_SIZE) for p in images]


def register_synthetic(root: Path = None) -> None:
    """Register ``synthetic_ov_sem_seg_train`` (seen classes) and ``synthetic_ov_sem_seg_val`` (all)."""
    root = Path(root) if root is not None else default_root()
    for split, spec in SPLITS.items():
        name = f"synthetic_ov_sem_seg_{split}"
        DatasetCatalog.register(name, lambda split=split: load_split(root, split))
        MetadataCatalog.get(name).set(
            stuff_classes=list(spec["classes"]), ignore_label=IGNORE_LABEL, evaluator_type="sem_seg",
            image_root=str(root / "images" / split), sem_seg_root=str(root / "labels" / split),
            stuff_colors=[[int(c) for c in class_appearance(CLASSES.index(n))["colour"]] for n in spec["classes"]])


register_synthetic()
