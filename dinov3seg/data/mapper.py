"""Dataset mapper: reads an image (and its label in training), augments, returns tensors."""
import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from PIL import Image

from ..errors import DataError
from .color_aug import ColorAugSSD


def read_label(path: str) -> np.ndarray:
    """A label map as stored (uint8 PNG or uint16 TIFF), without any mode conversion."""
    with Image.open(path) as label:
        return np.asarray(label).copy()


class SemSegDatasetMapper:
    """Maps a Detectron2 sem-seg dataset dict to {"image": (3, H, W) uint8 tensor, "sem_seg": (H, W) long}.

    Training: resize the short side, crop (avoiding crops dominated by one class), SSD colour
    augmentation (INPUT.COLOR_AUG_SSD), flip: CAT-Seg's order.
    Test: optional short-side resize; the label is not read (the evaluator reads it from disk).
    """

    @configurable
    def __init__(self, *, is_train: bool, augmentations, image_format: str, ignore_value: int):
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.ignore_value = ignore_value

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        i = cfg.INPUT
        if is_train:
            augs = [T.ResizeShortestEdge(i.MIN_SIZE_TRAIN, i.MAX_SIZE_TRAIN, i.MIN_SIZE_TRAIN_SAMPLING)]
            if i.CROP.ENABLED:
                augs.append(T.RandomCrop_CategoryAreaConstraint(
                    i.CROP.TYPE, i.CROP.SIZE, i.CROP.SINGLE_CATEGORY_MAX_AREA, cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE))
            if i.COLOR_AUG_SSD:
                augs.append(ColorAugSSD(i.FORMAT))
            augs.append(T.RandomFlip())
        else:
            augs = [T.ResizeShortestEdge(i.MIN_SIZE_TEST, i.MAX_SIZE_TEST)] if i.MIN_SIZE_TEST > 0 else []
        return dict(is_train=is_train, augmentations=augs, image_format=i.FORMAT,
                    ignore_value=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE)

    def __call__(self, dataset_dict):
        d = dict(dataset_dict)
        image = utils.read_image(d["file_name"], format=self.image_format)
        utils.check_image_size(d, image)
        label = None
        if self.is_train:
            label = read_label(d.pop("sem_seg_file_name"))
            if label.dtype != np.uint8:  # resized exactly by nearest interpolation in float32
                label = label.astype(np.float32)
            if label.shape != image.shape[:2]:
                raise DataError(f"label {d.get('file_name')} has size {label.shape}, image has {image.shape[:2]}")
        aug_input = T.AugInput(image, sem_seg=label)
        self.augmentations(aug_input)
        d["image"] = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
        if label is not None:
            d["sem_seg"] = torch.as_tensor(aug_input.sem_seg.astype(np.int64))
        return d
