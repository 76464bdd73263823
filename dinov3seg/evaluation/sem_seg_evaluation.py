"""Semantic-segmentation evaluation: Detectron2's SemSegEvaluator, extended with

* a background mode (PAS-20b): the model predicts over a vocabulary whose first classes are the scored ones;
  a prediction of any later (distractor) class counts as "background", the last scored class;
* a seen / unseen breakdown: mIoU over the classes whose name or a synonym is in the training vocabulary,
  mIoU over the others, and their harmonic mean;
* label maps read from PNG or 16-bit TIFF, with a clear error on label values outside the classes.
"""
import re
from typing import Iterable, List, Optional, Sequence

import numpy as np
from PIL import Image

from detectron2.data import MetadataCatalog
from detectron2.evaluation import SemSegEvaluator
from detectron2.utils.file_io import PathManager

from ..errors import DataError


def synonym_keys(name: str) -> List[str]:
    """Normalised synonyms of one class name: lower case, letters and digits only ("Potted-plant" ->
    "pottedplant"), so spellings across datasets match."""
    return [k for k in (re.sub(r"[^a-z0-9]", "", s.lower()) for s in name.split(",")) if k]


def seen_mask(class_names: Sequence[str], train_names: Iterable[str]) -> np.ndarray:
    """Bool array: True where a class shares a name or synonym with any training class."""
    train_keys = {k for n in train_names for k in synonym_keys(n)}
    return np.array([any(k in train_keys for k in synonym_keys(n)) for n in class_names], dtype=bool)


def per_class_iou(conf_matrix: np.ndarray):
    """IoU per class from a (N+1) x (N+1) confusion matrix (rows: prediction, columns: ground truth, last
    row/column: ignore), as Detectron2 computes it. Returns (iou, has_gt, in_union): IoU is NaN where a
    class has no ground-truth pixel; mIoU = sum(iou[has_gt]) / count(in_union)."""
    tp = conf_matrix.diagonal()[:-1].astype(np.float64)
    pos_gt = conf_matrix[:-1, :-1].sum(axis=0).astype(np.float64)
    pos_pred = conf_matrix[:-1, :-1].sum(axis=1).astype(np.float64)
    has_gt = pos_gt > 0
    iou = np.full(len(tp), np.nan)
    iou[has_gt] = tp[has_gt] / (pos_gt + pos_pred - tp)[has_gt]
    return iou, has_gt, (pos_gt + pos_pred) > 0


def mean_iou(conf_matrix: np.ndarray, classes: np.ndarray) -> float:
    """Detectron2's mIoU (in %) restricted to the classes where ``classes`` is True; NaN if none counts."""
    iou, has_gt, in_union = per_class_iou(conf_matrix)
    count = np.count_nonzero(in_union & classes)
    return 100.0 * np.sum(iou[has_gt & classes]) / count if count else float("nan")


def read_label_map(path: str) -> np.ndarray:
    """A label map (PNG, or 16-bit TIFF for A-847 / PC-459) as an int64 array."""
    with PathManager.open(path, "rb") as f, Image.open(f) as img:
        return np.asarray(img, dtype=np.int64)


class OpenVocabSemSegEvaluator(SemSegEvaluator):
    """SemSegEvaluator over the dataset's scored classes, with the optional seen/unseen breakdown.

    Scored classes: metadata ``eval_classes`` if set (background benchmark), else ``stuff_classes``.
    With ``eval_classes`` of length K, predicted ids >= K - 1 are folded into K - 1 ("background").
    """

    def __init__(self, dataset_name: str, distributed: bool = True, output_dir: Optional[str] = None,
                 train_class_names: Optional[Sequence[str]] = None):
        """
        Args:
            dataset_name: a registered dataset.
            distributed: gather over all processes before computing metrics (Detectron2 semantics).
            output_dir: where Detectron2 writes sem_seg_predictions.json and sem_seg_evaluation.pth.
            train_class_names: the training vocabulary; if given, results add ``mIoU_seen``,
                ``mIoU_unseen``, ``hIoU`` (harmonic mean) and the class counts ``num_seen``/``num_unseen``.
        """
        super().__init__(dataset_name, distributed=distributed, output_dir=output_dir)
        self._compute_boundary_iou = False  # newer Detectron2: boundary IoU is not part of this protocol
        meta = MetadataCatalog.get(dataset_name)
        eval_classes = meta.get("eval_classes", None)
        self._background = len(eval_classes) - 1 if eval_classes else None
        names = list(eval_classes or meta.stuff_classes)
        self._num_classes = len(names)
        # Result keys use the first synonym ("IoU-person" rather than "IoU-person, individual, ...").
        short = [n.split(",")[0].strip() for n in names]
        self._class_names = short if len(set(short)) == len(short) else names
        self._seen = None
        if train_class_names is not None:
            self._seen = seen_mask(names, train_class_names)
            self._scored = np.ones(len(names), dtype=bool)
            if self._background is not None:
                self._scored[self._background] = False  # "background" is neither seen nor unseen

    def process(self, inputs, outputs):
        """inputs: dicts with ``file_name``; outputs: dicts with ``sem_seg``, a T x H x W score tensor."""
        n = self._num_classes
        for input, output in zip(inputs, outputs):
            pred = output["sem_seg"].argmax(dim=0).to(self._cpu_device).numpy().astype(np.int64)
            if self._background is not None:
                pred = np.minimum(pred, self._background)
            gt_file = self.input_file_to_gt_file[input["file_name"]]
            gt = read_label_map(gt_file)
            ignore = gt == self._ignore_label
            invalid = ~ignore & ((gt < 0) | (gt >= n))
            if invalid.any():
                bad = np.unique(gt[invalid])[:5].tolist()
                raise DataError(f"{gt_file}: label values {bad} are neither classes 0..{n - 1} nor the ignore "
                                 f"value {self._ignore_label}. Rerun the dataset's prepare script.")
            gt[ignore] = n
            if pred.shape != gt.shape:
                raise DataError(f"{gt_file}: prediction {pred.shape} and label {gt.shape} differ in size")
            self._conf_matrix += np.bincount((n + 1) * pred.reshape(-1) + gt.reshape(-1),
                                             minlength=self._conf_matrix.size).reshape(self._conf_matrix.shape)
            self._predictions.extend(self.encode_json_sem_seg(pred, input["file_name"]))

    def evaluate(self):
        results = super().evaluate()  # None on non-main processes
        if results is None or self._seen is None:
            return results
        res = results["sem_seg"]
        seen, unseen = self._seen & self._scored, ~self._seen & self._scored
        s, u = mean_iou(self._conf_matrix, seen), mean_iou(self._conf_matrix, unseen)
        res["mIoU_seen"], res["mIoU_unseen"] = s, u
        res["hIoU"] = 2 * s * u / (s + u) if s + u > 0 else s + u  # 0 if both are 0, NaN if either is
        res["num_seen"], res["num_unseen"] = int(seen.sum()), int(unseen.sum())
        self._logger.info(f"{self._dataset_name}: mIoU seen {s:.2f} ({seen.sum()} classes), "
                          f"unseen {u:.2f} ({unseen.sum()} classes), harmonic mean {res['hIoU']:.2f}")
        return results
