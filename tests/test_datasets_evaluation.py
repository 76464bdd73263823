"""Evaluators on hand-made predictions with known IoUs: plain, background (PAS-20b), seen/unseen."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog

from dinov3seg.config import add_dinov3seg_config
from dinov3seg.evaluation import build_evaluator, seen_mask

GT = np.array([[0, 0, 1, 1], [2, 2, 255, 255]])
PRED = np.array([[0, 1, 1, 1], [2, 0, 0, 2]])
# class 0: tp 1, gt 2, pred 2 (the pred at an ignore pixel does not count) -> 1/3; class 1: 2/(2+3-2) = 2/3;
# class 2: 1/(2+1-1) = 1/2.
IOU = [1 / 3, 2 / 3, 1 / 2]


def register(name, tmp_path, gt, classes, ext="png", ignore=255, **meta):
    path = tmp_path / f"{name}.{ext}"
    Image.fromarray(gt.astype(np.uint16 if ext == "tif" else np.uint8)).save(path)
    dicts = [{"file_name": str(tmp_path / f"{name}.jpg"), "sem_seg_file_name": str(path)}]
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).set(stuff_classes=classes, ignore_label=ignore, evaluator_type=meta.pop("type", "sem_seg"),
                                  **meta)
    return dicts


def scores(pred, num_classes):
    """A T x H x W score tensor whose argmax is ``pred``."""
    return torch.nn.functional.one_hot(torch.as_tensor(pred), num_classes).permute(2, 0, 1).float()


def evaluate(name, dicts, pred, num_classes, seen_unseen=False, train=("tiny_train",)):
    cfg = get_cfg()
    add_dinov3seg_config(cfg)
    cfg.TEST.SEEN_UNSEEN = seen_unseen
    cfg.DATASETS.TRAIN = train
    evaluator = build_evaluator(cfg, name, output_folder=None)
    evaluator.reset()
    evaluator.process(dicts, [{"sem_seg": scores(pred, num_classes)}])
    return evaluator.evaluate()["sem_seg"]


def test_known_ious(tmp_path):
    dicts = register("tiny_eval", tmp_path, GT, ["a", "b", "c"])
    res = evaluate("tiny_eval", dicts, PRED, 3)
    assert res["mIoU"] == pytest.approx(100 * np.mean(IOU))
    assert [res["IoU-a"], res["IoU-b"], res["IoU-c"]] == pytest.approx([100 * v for v in IOU])
    assert "mIoU_seen" not in res


def test_uint16_tiff_labels_with_ignore_65535(tmp_path):
    gt = np.where(GT == 255, 65535, GT)
    dicts = register("tiny_eval_tif", tmp_path, gt, ["a", "b", "c"], ext="tif", ignore=65535)
    assert evaluate("tiny_eval_tif", dicts, PRED, 3)["mIoU"] == pytest.approx(50.0)


def test_label_outside_the_classes_is_an_error(tmp_path):
    # PC-459 registered with ignore 65535 but a label holding 459 (the old convention) must not pass silently.
    gt = np.where(GT == 255, 3, GT)
    dicts = register("tiny_eval_bad", tmp_path, gt, ["a", "b", "c"], ext="tif", ignore=65535)
    with pytest.raises(ValueError, match="prepare script"):
        evaluate("tiny_eval_bad", dicts, PRED, 3)


def test_background_evaluator_folds_distractors(tmp_path):
    # Vocabulary: 2 scored classes + 3 distractors; labels: 0, 1, 2 = background, 255 ignore.
    gt = np.array([[0, 0, 1, 1], [2, 2, 2, 255]])
    pred = np.array([[0, 3, 1, 1], [4, 2, 0, 1]])  # 3, 4 (distractors) count as background (2)
    dicts = register("tiny_eval_bg", tmp_path, gt, ["x", "y", "d1", "d2", "d3"], type="sem_seg_background",
                     eval_classes=["x", "y", "background"])
    res = evaluate("tiny_eval_bg", dicts, pred, 5)
    # x: tp 1, gt 2, pred 2 -> 1/3; y: tp 2, gt 2, pred 2 -> 1; background: tp 2, gt 3, pred 3 (folded 2s at
    # (0,1) of gt x, (1,0) and (1,1)) -> 2/(3+3-2) = 1/2.
    assert [res["IoU-x"], res["IoU-y"], res["IoU-background"]] == pytest.approx([100 / 3, 100.0, 50.0])
    assert res["mIoU"] == pytest.approx(100 * (1 / 3 + 1 + 0.5) / 3)


def test_seen_unseen_breakdown(tmp_path):
    dicts = register("tiny_eval_su", tmp_path, GT, ["a", "b", "c, sea"], ext="png")
    register("tiny_train", tmp_path, GT, ["A", "ocean, Sea", "d"])  # matches a (case) and c (a synonym)
    res = evaluate("tiny_eval_su", dicts, PRED, 3, seen_unseen=True)
    seen, unseen = 100 * (IOU[0] + IOU[2]) / 2, 100 * IOU[1]
    assert res["mIoU_seen"] == pytest.approx(seen) and res["mIoU_unseen"] == pytest.approx(unseen)
    assert res["hIoU"] == pytest.approx(2 * seen * unseen / (seen + unseen))
    assert (res["num_seen"], res["num_unseen"]) == (2, 1)
    assert res["mIoU"] == pytest.approx(50.0)


def test_seen_unseen_without_unseen_classes_is_nan(tmp_path):
    dicts = register("tiny_eval_all_seen", tmp_path, GT, ["a", "b", "c"])
    register("tiny_train", tmp_path, GT, ["a", "b", "c"])
    res = evaluate("tiny_eval_all_seen", dicts, PRED, 3, seen_unseen=True)
    assert res["mIoU_seen"] == pytest.approx(50.0) and math.isnan(res["mIoU_unseen"]) and math.isnan(res["hIoU"])


def test_background_is_neither_seen_nor_unseen(tmp_path):
    gt = np.array([[0, 0, 1, 1], [2, 2, 2, 255]])
    dicts = register("tiny_eval_bg_su", tmp_path, gt, ["person", "bird", "d1"], type="sem_seg_background",
                     eval_classes=["person", "bird", "background"])
    register("tiny_train", tmp_path, GT, ["person", "grass"])
    res = evaluate("tiny_eval_bg_su", dicts, np.array([[0, 0, 1, 1], [2, 2, 2, 0]]), 3, seen_unseen=True)
    assert (res["num_seen"], res["num_unseen"]) == (1, 1)


def test_synonym_matching():
    assert seen_mask(["potted plant", "TV, television", "cat"], ["pottedplant", "television receiver, television",
                                                                 "dog"]).tolist() == [True, True, False]


def test_unknown_evaluator_type_is_a_clear_error(tmp_path):
    dicts = register("tiny_eval_odd", tmp_path, GT, ["a", "b", "c"], type="coco")
    with pytest.raises(ValueError, match="evaluator_type"):
        evaluate("tiny_eval_odd", dicts, PRED, 3)
