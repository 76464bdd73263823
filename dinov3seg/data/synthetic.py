"""A synthetic compositional open-vocabulary dataset for the quickstart, generated on first use.

Every class is a colour x texture pair named by its two words ("red striped", "blue dotted", ...). The
training split uses the SEEN pairs only; each UNSEEN pair (one per colour and one per texture, a Latin
diagonal of the grid) appears at validation only, beside seen pairs that share its colour or its texture.
Every word therefore occurs in training, and an unseen name is scored right only when the model composes
its two words: a pixel of an unseen pair scores well on the seen pairs that share either attribute, so it
cannot go to the unseen name merely because no seen name fits. Training labels index the seen vocabulary,
validation labels the full one (seen and unseen classes are scored separately).

Files are written in Detectron2's sem-seg layout: ``<root>/images/<split>/*.jpg``,
``<root>/labels/<split>/*.png`` (uint8, 255 = ignore), plus ``classes_<split>.json`` and ``split.json``.
"""
import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import Dict, List

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

# Colour words and their RGB; texture words and their brightness pattern (see ``texture_pattern``).
COLOURS = {"red": (170, 80, 80), "green": (80, 150, 90), "blue": (80, 100, 170), "yellow": (175, 165, 80)}
TEXTURES = ("plain", "striped", "dotted", "checked")
CLASSES = [f"{c} {t}" for c in COLOURS for t in TEXTURES]
# One held-out pair per colour and per texture: the (i, i + 1 mod 4) diagonal of the colour x texture grid.
UNSEEN = [f"{c} {TEXTURES[(i + 1) % len(TEXTURES)]}" for i, c in enumerate(COLOURS)]
SEEN = [c for c in CLASSES if c not in UNSEEN]
SPLITS = {"train": dict(num_images=160, classes=SEEN, seed=0),
          "val": dict(num_images=48, classes=CLASSES, seed=1)}
IMAGE_SIZE = 160
IGNORE_LABEL = 255
TEXTURE_PERIOD = 4  # pixels per stripe / dot / check period (four periods per 16-pixel patch)
TEXTURE_CONTRAST = 80  # brightness swing of the texture pattern, 0-255 scale
VERSION = 2  # bump when the generator changes, to regenerate existing folders


def default_root() -> Path:
    return Path(os.getenv("DETECTRON2_DATASETS", "datasets")) / "synthetic_ov"


def class_appearance(name: str) -> Dict[str, object]:
    """The colour (RGB) and texture word of a class name "<colour> <texture>"."""
    colour, texture = name.split(" ")
    return dict(colour=np.array(COLOURS[colour], dtype=np.float64), texture=texture)


def texture_pattern(texture: str, shape) -> np.ndarray:
    """A brightness pattern in [-1, 1] of ``shape`` (H, W), anchored to the image grid."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    phase_y, phase_x = 2 * np.pi * yy / TEXTURE_PERIOD, 2 * np.pi * xx / TEXTURE_PERIOD
    if texture == "plain":
        return np.zeros(shape)
    if texture == "striped":  # horizontal bands (kept by the horizontal flip of training)
        return np.sign(np.sin(phase_y))
    if texture == "dotted":  # bright dots on a darker ground
        return np.where(np.cos(phase_y) * np.cos(phase_x) > 0.3, 1.0, -0.6)
    if texture == "checked":
        return np.sign(np.sin(phase_y) * np.sin(phase_x))
    raise ValueError(f"unknown texture {texture!r}; expected one of {TEXTURES}")


def render(label: np.ndarray, class_names: List[str], rng: np.random.Generator) -> np.ndarray:
    """Paint an RGB uint8 image for a label map whose values index ``class_names``."""
    image = np.zeros(label.shape + (3,))
    patterns = {t: texture_pattern(t, label.shape) for t in TEXTURES}
    for index, name in enumerate(class_names):
        mask = label == index
        if mask.any():
            a = class_appearance(name)
            image[mask] = a["colour"] + TEXTURE_CONTRAST * patterns[a["texture"]][mask, None]
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


def _is_complete(root: Path) -> bool:
    stamp = root / "split.json"
    return stamp.is_file() and json.loads(stamp.read_text()).get("version") == VERSION


def generate(root: Path) -> None:
    """Write both splits under ``root`` (skipped when a complete copy of this version exists). Safe when several
    processes start at once (the ranks of a multi-process run): one writes under a file lock, the others wait,
    and the version stamp is written last, so a half-written copy is never taken as complete."""
    if _is_complete(root):
        return
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".generate.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _is_complete(root):  # another process wrote it while this one waited
            return
        (root / "split.json").unlink(missing_ok=True)
        for split, spec in SPLITS.items():
            rng = np.random.default_rng(spec["seed"])
            for folder in ("images", "labels"):  # drop files of an older version
                shutil.rmtree(root / folder / split, ignore_errors=True)
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
            for i in range(spec["num_images"]):
                label = random_label(len(spec["classes"]), rng)
                image = render(label, spec["classes"], rng)
                Image.fromarray(image).save(root / "images" / split / f"{i:05d}.jpg", quality=95)
                Image.fromarray(label).save(root / "labels" / split / f"{i:05d}.png")
            (root / f"classes_{split}.json").write_text(json.dumps(spec["classes"]))
        (root / "split.json.tmp").write_text(json.dumps({"version": VERSION, "seen": SEEN, "unseen": UNSEEN}))
        os.replace(root / "split.json.tmp", root / "split.json")


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
            stuff_colors=[list(COLOURS[n.split(" ")[0]]) for n in spec["classes"]])


register_synthetic()
