"""The training set and the six open-vocabulary benchmarks, registered in DatasetCatalog / MetadataCatalog.

Every dataset is one row of :data:`DATASETS`; one generic function registers them all under
``$DETECTRON2_DATASETS`` (default ``./datasets``). Registration never touches the disk: a dataset whose
folders are missing raises a ``FileNotFoundError`` naming the prepare script only when its dicts are loaded.

Metadata of every dataset: ``stuff_classes`` (the vocabulary given to the model; synonyms comma-separated
inside one name), ``stuff_colors``, ``ignore_label``, ``evaluator_type`` ("sem_seg" or
"sem_seg_background"), ``image_root``, ``sem_seg_root``, ``prepare_command`` and, for the background
benchmark, ``eval_classes`` (the classes scored: the 20 VOC classes + "background"; predictions of any
other vocabulary class count as background).
"""
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog

# Class-name JSONs and prepare scripts live in the repository's datasets/ folder.
REPO_DATASETS = Path(__file__).resolve().parents[3] / "datasets"


@dataclass(frozen=True)
class SemSegDataset:
    """One registered semantic-segmentation split (paths relative to $DETECTRON2_DATASETS)."""
    name: str  # registered name
    label: str  # short name in tables, e.g. "A-847"
    classes_json: str  # vocabulary, in datasets/
    image_dir: str
    label_dir: str
    prepare: str  # script that writes label_dir (and image_dir where it is generated)
    label_ext: str = "png"
    ignore_label: int = 255
    evaluator_type: str = "sem_seg"
    eval_classes_json: str = ""  # background benchmark: the scored classes, "background" appended
    paper_miou: Optional[float] = None  # dinov3.seg, paper Table 1 (None: not reported)

    @property
    def prepare_command(self) -> str:
        return f"python datasets/{self.prepare}"


_PC = "VOCdevkit/VOC2010"
_VOC = "VOCdevkit/VOC2012"
DATASETS: Tuple[SemSegDataset, ...] = (
    SemSegDataset("coco_2017_train_stuff_sem_seg", "COCO-Stuff train", "coco171.json", "coco-stuff/images/train2017",
                  "coco-stuff/annotations_detectron2/train2017", "prepare_coco_stuff.py"),
    SemSegDataset("coco_2017_val_stuff_sem_seg", "COCO-Stuff val", "coco171.json", "coco-stuff/images/val2017",
                  "coco-stuff/annotations_detectron2/val2017", "prepare_coco_stuff.py"),
    SemSegDataset("ade20k_full_sem_seg_val", "A-847", "ade847.json", "ADE20K_2021_17_01/images_detectron2/validation",
                  "ADE20K_2021_17_01/annotations_detectron2/validation", "prepare_ade20k_full.py",
                  label_ext="tif", ignore_label=65535, paper_miou=20.09),
    SemSegDataset("pascal_context_459_sem_seg_val", "PC-459", "pc459.json", f"{_PC}/JPEGImages",
                  f"{_PC}/annotations_detectron2/pc459_val", "prepare_pascal_context_459.py",
                  label_ext="tif", ignore_label=65535, paper_miou=27.80),
    SemSegDataset("ade20k_150_sem_seg_val", "A-150", "ade150.json", "ADEChallengeData2016/images/validation",
                  "ADEChallengeData2016/annotations_detectron2/validation", "prepare_ade20k_150.py",
                  paper_miou=42.19),
    SemSegDataset("pascal_context_59_sem_seg_val", "PC-59", "pc59.json", f"{_PC}/JPEGImages",
                  f"{_PC}/annotations_detectron2/pc59_val", "prepare_pascal_context_59.py", paper_miou=64.27),
    SemSegDataset("voc_2012_sem_seg_val", "PAS-20", "voc20.json", f"{_VOC}/JPEGImages",
                  f"{_VOC}/annotations_detectron2/val", "prepare_voc.py", paper_miou=97.86),
    SemSegDataset("voc_2012_background_sem_seg_val", "PAS-20b", "voc20b.json", f"{_VOC}/JPEGImages",
                  f"{_VOC}/annotations_detectron2_bg/val", "prepare_voc.py", evaluator_type="sem_seg_background",
                  eval_classes_json="voc20.json"),
)
# The six benchmarks of the paper's Table 1 (+ PAS-20b), in table order: name -> dataset row.
BENCHMARKS: Dict[str, SemSegDataset] = {d.name: d for d in DATASETS if not d.name.startswith("coco_")}


def dataset_root() -> Path:
    return Path(os.environ.get("DETECTRON2_DATASETS", "datasets"))


def class_names(json_name: str) -> List[str]:
    """A class-name list from the repository's datasets/ folder."""
    return json.loads((REPO_DATASETS / json_name).read_text())


def class_colors(num_classes: int) -> List[List[int]]:
    """Distinct, deterministic colours: the Pascal VOC colour map of ids 1..num_classes (bit interleaving)."""
    colors = []
    for i in range(1, num_classes + 1):
        rgb, c = [0, 0, 0], i
        for shift in range(7, -1, -1):
            for ch in range(3):
                rgb[ch] |= ((c >> ch) & 1) << shift
            c >>= 3
        colors.append(rgb)
    return colors


def missing_data_message(dataset: SemSegDataset, root: Path, missing: List[Path]) -> str:
    return (f"Dataset '{dataset.name}' ({dataset.label}) is not prepared: {', '.join(map(str, missing))} "
            f"not found (DETECTRON2_DATASETS={root}). Download the raw release as described in "
            f"datasets/README.md, then run `{dataset.prepare_command}`.")


def check_prepared(dataset: SemSegDataset, root: Optional[Path] = None) -> Optional[str]:
    """None if the dataset's folders exist and hold labels, else the message saying what to do."""
    root = dataset_root() if root is None else Path(root)
    image_root, label_root = root / dataset.image_dir, root / dataset.label_dir
    missing = [p for p in (image_root, label_root) if not p.is_dir()]
    if not missing and next(label_root.glob(f"*.{dataset.label_ext}"), None) is None:
        missing = [label_root / f"*.{dataset.label_ext}"]
    return missing_data_message(dataset, root, missing) if missing else None


def load_sem_seg_dicts(dataset: SemSegDataset, root: Path) -> List[dict]:
    """One dict per label file: ``file_name`` (image), ``sem_seg_file_name``; image and label share a stem."""
    message = check_prepared(dataset, root)
    if message:
        raise FileNotFoundError(message)
    image_root, label_root = root / dataset.image_dir, root / dataset.label_dir
    dicts = [{"file_name": str(image_root / (p.stem + ".jpg")), "sem_seg_file_name": str(p)}
             for p in sorted(label_root.glob(f"*.{dataset.label_ext}"))]
    missing = [d["file_name"] for d in dicts if not os.path.isfile(d["file_name"])]
    if missing:
        raise FileNotFoundError(f"Dataset '{dataset.name}': {len(missing)} of {len(dicts)} labelled images are "
                                f"missing, e.g. {missing[0]}. Check the download, then rerun "
                                f"`{dataset.prepare_command}`.")
    return dicts


def register_dataset(dataset: SemSegDataset, root: Path) -> None:
    """Register one dataset (replacing an earlier registration of the same name)."""
    if dataset.name in DatasetCatalog.list():
        DatasetCatalog.remove(dataset.name)
        MetadataCatalog.remove(dataset.name)
    DatasetCatalog.register(dataset.name, lambda: load_sem_seg_dicts(dataset, root))
    classes = class_names(dataset.classes_json)
    extra = {}
    if dataset.eval_classes_json:
        extra["eval_classes"] = class_names(dataset.eval_classes_json) + ["background"]
    MetadataCatalog.get(dataset.name).set(
        stuff_classes=classes, stuff_colors=class_colors(len(classes)), ignore_label=dataset.ignore_label,
        evaluator_type=dataset.evaluator_type, image_root=str(root / dataset.image_dir),
        sem_seg_root=str(root / dataset.label_dir), prepare_command=dataset.prepare_command, **extra)


def register_all(root: Optional[str] = None) -> None:
    """Register every dataset of :data:`DATASETS` under ``root`` (default: $DETECTRON2_DATASETS)."""
    root = dataset_root() if root is None else Path(root)
    for dataset in DATASETS:
        register_dataset(dataset, root)
