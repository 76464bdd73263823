"""SSD colour augmentation (INPUT.COLOR_AUG_SSD): image-only, reproducible, RGB/BGR aware, in the train mapper."""
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import transforms as T
from detectron2.solver import build_lr_scheduler

from dinov3seg import get_dinov3seg_cfg
from dinov3seg.data.color_aug import ColorAugSSD, ColorAugSSDTransform
from dinov3seg.data.mapper import SemSegDatasetMapper

REPO = Path(__file__).resolve().parents[1]


def image(seed=0, size=(24, 32)):
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def transform(fmt="RGB", **kw):
    args = dict(brightness=None, contrast=None, saturation=None, hue=None, contrast_first=True)
    args.update(kw)
    return ColorAugSSDTransform(fmt, **args)


def test_each_step_does_what_it_says():
    img = image()
    assert np.array_equal(transform().apply_image(img), img)
    assert np.array_equal(transform(brightness=20.0).apply_image(img), np.clip(img.astype(int) + 20, 0, 255))
    assert np.array_equal(transform(contrast=0.5).apply_image(img), (img * 0.5).astype(np.uint8))
    grey = transform(saturation=0.0).apply_image(img).astype(int)
    assert np.abs(grey - grey.mean(axis=2, keepdims=True)).max() <= 1  # no saturation left
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
    shifted = cv2.cvtColor(transform(hue=170).apply_image(img), cv2.COLOR_RGB2HSV)
    # The hue moves by 170 modulo 180 wherever the round trip through HSV keeps it (saturated pixels).
    sure = (hsv[..., 1] > 100) & (hsv[..., 2] > 100)
    assert (np.abs((shifted[..., 0].astype(int) - hsv[..., 0] - 170) % 180)[sure] <= 2).mean() > 0.9


def test_contrast_order_and_bgr_images():
    img = image(1)
    first = transform(contrast=1.4, saturation=0.6, contrast_first=True).apply_image(img)
    last = transform(contrast=1.4, saturation=0.6, contrast_first=False).apply_image(img)
    assert not np.array_equal(first, last)
    # A BGR image gets the same change, in its own channel order.
    rgb_out = transform(hue=30, saturation=1.3).apply_image(img)
    bgr_out = transform("BGR", hue=30, saturation=1.3).apply_image(img[..., ::-1].copy())
    assert np.array_equal(rgb_out, bgr_out[..., ::-1])
    with pytest.raises(ValueError, match="INPUT.FORMAT"):
        transform("YUV")


def test_augmentation_changes_images_not_labels_and_is_reproducible():
    img, label = image(2), np.random.default_rng(3).integers(0, 5, (24, 32)).astype(np.uint8)

    def run(seed):
        np.random.seed(seed)
        out = []
        for _ in range(8):
            aug_input = T.AugInput(img.copy(), sem_seg=label.copy())
            T.AugmentationList([ColorAugSSD("RGB")])(aug_input)
            assert np.array_equal(aug_input.sem_seg, label)
            out.append(aug_input.image)
        return out

    first, again = run(0), run(0)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert sum(not np.array_equal(a, img) for a in first) >= 4  # 1 - 1/16 of draws change the image


@pytest.mark.parametrize("enabled", [True, False])
def test_train_mapper_follows_the_config_in_catseg_order(enabled):
    cfg = get_dinov3seg_cfg(str(REPO / "configs/vitl_384.yaml"), ["INPUT.COLOR_AUG_SSD", str(enabled)])
    kinds = [type(a).__name__ for a in SemSegDatasetMapper(cfg, is_train=True).augmentations.augs]
    expected = ["ResizeShortestEdge", "RandomCrop_CategoryAreaConstraint"] + ["ColorAugSSD"] * enabled + ["RandomFlip"]
    assert kinds == expected
    assert "ColorAugSSD" not in [type(a).__name__ for a in SemSegDatasetMapper(cfg, is_train=False).augmentations.augs]


def test_paper_recipe_is_catsegs():
    cfg = get_dinov3seg_cfg(str(REPO / "configs/vitl_384.yaml"))
    assert cfg.INPUT.COLOR_AUG_SSD and cfg.SOLVER.WARMUP_ITERS == 0 and cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupCosineLR"
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.SOLVER.BASE_LR)
    build_lr_scheduler(cfg, optimizer)
    assert optimizer.param_groups[0]["lr"] == cfg.SOLVER.BASE_LR  # full LR at iteration 0: no warmup
