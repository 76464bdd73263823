"""Steps shared by the meta-architectures (the trained ``DINOv3Seg`` and the training-free ``DINOTxtZeroShot``):
dense patch features from the frozen encoders, the configured test vocabulary, and scores at the output size."""
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn

from ..data.vocabulary import load_class_names


def patch_features(dinotxt: nn.Module, images: torch.Tensor, *, use_head: bool, anyup: Optional[nn.Module] = None,
                   output_stride: int = 16) -> torch.Tensor:
    """Dense dinov3.txt features, optionally refined by AnyUp.

    Args:
        dinotxt: the ``DINOTxt`` encoder.
        images: (B, 3, H, W) normalised, H and W multiples of the patch size p (16).
        use_head: True = vision-head patch tokens, False = raw backbone patch tokens (final norm).
        anyup: AnyUp refinement, or None.
        output_stride: AnyUp's output stride (16 refines in place, 8 / 4 upsample); unused without AnyUp.
    Returns:
        (B, D, H/s, W/s) unnormalised features, s = ``output_stride`` with AnyUp, else p.
    """
    _, patches = dinotxt.encode_image(images, use_head=use_head)
    if anyup is not None:
        p = dinotxt.backbone.patch_size
        size = (patches.shape[-2] * p // output_stride, patches.shape[-1] * p // output_stride)
        patches = anyup(images, patches, output_size=size)
    return patches


def configured_test_vocabulary(cfg) -> Optional[List[str]]:
    """The test class names MODEL.DINOV3SEG.TEST_CLASS_JSON or DATASETS.TEST[0] give, None if neither is set
    (the model then waits for ``set_vocabulary``)."""
    if not (cfg.MODEL.DINOV3SEG.TEST_CLASS_JSON or cfg.DATASETS.TEST):
        return None
    return load_class_names(cfg.MODEL.DINOV3SEG.TEST_CLASS_JSON, cfg.DATASETS.TEST,
                            "MODEL.DINOV3SEG.TEST_CLASS_JSON", "DATASETS.TEST")


def to_output_size(scores: torch.Tensor, batched_input: Dict[str, torch.Tensor]) -> torch.Tensor:
    """(T, h, w) scores -> (T, height, width) float32, bilinear, at the input dict's "height" / "width"
    (default: its image's size)."""
    image = batched_input["image"]
    size = (batched_input.get("height", image.shape[-2]), batched_input.get("width", image.shape[-1]))
    if tuple(scores.shape[-2:]) != tuple(size):
        scores = F.interpolate(scores[None].float(), size=size, mode="bilinear", align_corners=False)[0]
    return scores.float()


def is_training_free(cfg) -> bool:
    """True when cfg.MODEL.META_ARCHITECTURE needs no trained checkpoint (class attribute ``TRAINING_FREE``)."""
    return bool(getattr(META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE), "TRAINING_FREE", False))
