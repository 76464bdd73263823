"""Your own semantic-segmentation dataset: one call registers a folder of images, a folder of label maps
and a class-name file under a name.

    from dinov3seg.data.datasets import register_sem_seg_folder
    register_sem_seg_folder("mydata_train", images="data/mydata/images/train",
                            labels="data/mydata/labels/train", classes="data/mydata/classes.txt")

A label map is a single-channel image (PNG by default; 8- or 16-bit) with the image's stem and size, whose
values are class indexes into the class-name file (0 = its first name) or ``ignore_label``.

``train_net.py``, ``eval.sh`` and the demo see datasets registered by the Python files named in the
environment variable ``DINOV3SEG_DATASETS`` (several separated by ":"): ``import dinov3seg`` runs them in
every process, including each process ``launch`` starts, so

    DINOV3SEG_DATASETS=my_datasets.py python train_net.py --config-file my.yaml --num-gpus 2

works as it does for the built-in datasets.
"""
import logging
import os
import runpy
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from ..vocabulary import read_class_name_json, validate_vocabulary
from .register_benchmarks import DATASETS, class_colors

__all__ = ["register_sem_seg_folder", "read_class_file", "register_from_env", "ENV_VAR"]

logger = logging.getLogger(__name__)

ENV_VAR = "DINOV3SEG_DATASETS"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
SINGLE_CHANNEL_MODES = ("L", "P", "I", "I;16", "I;16B", "I;16L", "I;16N", "1")
_MAX_LISTED = 5  # examples listed in an error


def read_class_file(path: Union[str, os.PathLike], source: str = "class-name file") -> List[str]:
    """Class names from a JSON list, or from a text file with one class per line (synonyms comma-separated;
    blank lines and lines starting with "#" are skipped). Line / list order = label value. ``source`` (the
    argument or flag that named the file) starts every error."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        names = [n.strip() if isinstance(n, str) else n for n in read_class_name_json(str(path), source)]
    elif not path.is_file():
        raise FileNotFoundError(f"{source}: class-name file '{path}' does not exist")
    else:
        text = path.read_text(encoding="utf-8")
        names = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return validate_vocabulary(names, f"{source} '{path}'")


def _index_by_stem(folder: Path, extensions: Sequence[str], what: str) -> Dict[str, Path]:
    files: Dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in extensions:
            if p.stem in files:
                raise ValueError(f"{what} folder '{folder}' holds two files with the stem '{p.stem}' "
                                 f"({files[p.stem].name}, {p.name}); keep one per image.")
            files[p.stem] = p
    return files


def _examples(items: List[str]) -> str:
    more = f" (and {len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
    return "; ".join(items[:_MAX_LISTED]) + more


def _label_values(label: np.ndarray) -> np.ndarray:
    """The sorted distinct values of a label map (a bincount when they are small non-negative integers:
    10x faster than np.unique on a photo-sized map)."""
    flat = label.ravel()
    if flat.size and flat.dtype.kind in "ui" and flat.min() >= 0 and flat.max() <= 65535:
        return np.flatnonzero(np.bincount(flat))
    return np.unique(flat)


def _inspect(pair: dict):
    """(mode problem, size problem, distinct values) of one image / label pair."""
    with Image.open(pair["sem_seg_file_name"]) as label:
        if label.mode not in SINGLE_CHANNEL_MODES:
            return f"{pair['sem_seg_file_name']} ({label.mode})", None, None
        with Image.open(pair["file_name"]) as image:
            size = None
            if image.size != label.size:
                size = (f"{pair['sem_seg_file_name']} is {label.size[0]}x{label.size[1]}, its image "
                        f"{image.size[0]}x{image.size[1]}")
        return None, size, _label_values(np.asarray(label))


def check_labels(name: str, pairs: List[dict], num_classes: int, ignore_label: int) -> None:
    """Read every label map once (threads; a few ms per map): single channel, the image's size, values in
    0..num_classes-1 or ``ignore_label``. Raises one ValueError listing what is wrong, with examples."""
    bad_mode, bad_size, bad_values, used = [], [], [], set()
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for pair, (mode, size, values) in zip(pairs, pool.map(_inspect, pairs)):
            if mode:
                bad_mode.append(mode)
                continue
            if size:
                bad_size.append(size)
            used.update(values.tolist())
            wrong = values[(values != ignore_label) & ((values < 0) | (values >= num_classes))]
            if wrong.size:
                bad_values.append(f"{pair['sem_seg_file_name']}: {wrong[:_MAX_LISTED].tolist()}")
    logger.info(f"Dataset '{name}': checked {len(pairs)} label maps in {time.perf_counter() - start:.1f} s "
                "(register with validate=False to skip)")
    problems = []
    if bad_mode:
        problems.append(f"{len(bad_mode)} label maps are not single-channel index images (a colour-coded label "
                        f"must first be converted to class indexes): {_examples(bad_mode)}")
    if bad_size:
        problems.append(f"{len(bad_size)} label maps differ in size from their images: {_examples(bad_size)}")
    if bad_values:
        classes = sorted(v for v in used if v != ignore_label)
        hint = (f"The class-name file lists {num_classes} classes (label values 0..{num_classes - 1}, ignore "
                f"{ignore_label}) but the labels use values up to {max(classes)}: the class count does not match "
                "the labels. Add the missing names to the class-name file, or relabel.")
        if classes and min(classes) >= 1 and max(classes) == num_classes:
            hint += (" The labels look 1-based (0 unused, the largest value = the number of classes): subtract 1 "
                     f"(and map the old 0 to {ignore_label} if it meant 'unlabelled').")
        problems.append(f"{len(bad_values)} label maps hold values that are neither a class nor the ignore value: "
                        f"{_examples(bad_values)}. {hint}")
    if problems:
        raise ValueError(f"Dataset '{name}': " + " ".join(problems))


def register_sem_seg_folder(name: str, images: Union[str, os.PathLike], labels: Union[str, os.PathLike],
                            classes: Union[str, os.PathLike, Sequence[str]], *, ignore_label: int = 255,
                            label_ext: str = "png", validate: bool = True) -> None:
    """Register a semantic-segmentation folder pair in Detectron2's DatasetCatalog / MetadataCatalog.

    Args:
        name: the name to use in DATASETS.TRAIN / DATASETS.TEST (e.g. "mydata_train", "mydata_val").
        images: folder of images (jpg, png, ...).
        labels: folder of label maps, one per image with the same stem (``<stem>.<label_ext>``).
        classes: a class-name file (JSON list, or one class per line) or a list of names; the i-th name is
            label value i. Synonyms go comma-separated inside one name ("sofa, couch").
        ignore_label: the label value of unlabelled pixels (255 for 8-bit labels, 65535 for 16-bit). For
            training it must equal MODEL.SEM_SEG_HEAD.IGNORE_VALUE (255 by default).
        label_ext: extension of the label files ("png", "tif").
        validate: read every label map once, when the dataset is first loaded, and refuse wrong label values,
            colour labels and size mismatches (a few ms per image; False skips it for huge datasets).

    Folders, files and the class-name file are checked now; a label without its image, a missing folder or an
    ignore value inside the class range raise at once. Images without a label are left out, with a warning.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError("register_sem_seg_folder: give the dataset a non-empty name")
    if name in {d.name for d in DATASETS}:
        raise ValueError(f"'{name}' is a built-in dataset of dinov3seg; register yours under another name")
    image_root, label_root = Path(images).resolve(), Path(labels).resolve()
    for what, folder in (("images", image_root), ("labels", label_root)):
        if not folder.is_dir():
            raise FileNotFoundError(f"Dataset '{name}': the {what} folder '{folder}' does not exist")
    if isinstance(classes, (str, os.PathLike)):
        class_names = read_class_file(classes)
    else:
        class_names = validate_vocabulary([str(c) for c in classes], f"Dataset '{name}' class names")
    num_classes = len(class_names)
    if not isinstance(ignore_label, int) or ignore_label < 0 or ignore_label < num_classes:
        raise ValueError(f"Dataset '{name}': ignore_label {ignore_label} must be an integer outside the class "
                         f"values 0..{num_classes - 1} (e.g. 255 for 8-bit labels, 65535 for 16-bit)")
    ext = "." + label_ext.lstrip(".").lower()
    label_files = _index_by_stem(label_root, (ext,), "labels")
    image_files = _index_by_stem(image_root, IMAGE_EXTENSIONS, "images")
    if not label_files:
        raise FileNotFoundError(f"Dataset '{name}': no *{ext} label files in '{label_root}'")
    orphans = sorted(set(label_files) - set(image_files))
    if orphans:
        raise FileNotFoundError(f"Dataset '{name}': {len(orphans)} of {len(label_files)} label maps have no image "
                                f"with the same stem in '{image_root}': {_examples(orphans)}")
    unlabelled = sorted(set(image_files) - set(label_files))
    if unlabelled:
        logger.warning(f"Dataset '{name}': {len(unlabelled)} images have no label map in '{label_root}' and are "
                       f"left out: {_examples(unlabelled)}")
    pairs = [{"file_name": str(image_files[s]), "sem_seg_file_name": str(label_files[s])} for s in label_files]

    checked: List[bool] = []

    def load() -> List[dict]:
        if validate and not checked:
            check_labels(name, pairs, num_classes, ignore_label)
            checked.append(True)
        return [dict(d) for d in pairs]

    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        stuff_classes=class_names, stuff_colors=class_colors(num_classes), ignore_label=ignore_label,
        evaluator_type="sem_seg", image_root=str(image_root), sem_seg_root=str(label_root))


_done: List[str] = []


def register_from_env(value: Optional[str] = None) -> List[str]:
    """Run the Python files named in $DINOV3SEG_DATASETS (or ``value``), once per process; returns the
    files run now. Each file registers datasets, typically with :func:`register_sem_seg_folder`."""
    value = os.environ.get(ENV_VAR, "") if value is None else value
    ran = []
    for path in (p for p in value.split(os.pathsep) if p.strip()):
        if path in _done:
            continue
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{ENV_VAR}: '{path}' does not exist; it should name Python files that "
                                    "register your datasets (see README, 'Your own dataset').")
        try:
            runpy.run_path(path, run_name="dinov3seg_user_datasets")
        except Exception as e:  # keep the error's type (a missing folder stays a FileNotFoundError)
            e.add_note(f"(raised while running {ENV_VAR} file '{path}')")
            raise
        _done.append(path)
        ran.append(path)
    return ran
