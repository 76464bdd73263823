"""SSD-style photometric augmentation (CAT-Seg's ``INPUT.COLOR_AUG_SSD``), in Detectron2's pattern.

Detectron2 keeps its ``ColorAugSSDTransform`` under ``projects/`` (not installed with the library), so it is
written here the Detectron2 way: an :class:`Augmentation` draws the random parameters and returns a
deterministic :class:`Transform` that applies them to the image only (labels, boxes and coordinates pass
through). The distortion is SSD's (Liu et al., ECCV 2016): each of brightness, contrast, saturation and hue
is applied with probability 1/2, with contrast either first or last.
"""
from typing import Optional

import cv2
import numpy as np
from detectron2.data import transforms as T
from fvcore.transforms.transform import NoOpTransform, Transform

__all__ = ["ColorAugSSD", "ColorAugSSDTransform"]


def _affine_uint8(x: np.ndarray, scale: float = 1.0, shift: float = 0.0) -> np.ndarray:
    return np.clip(x.astype(np.float32) * scale + shift, 0, 255).astype(np.uint8)


class ColorAugSSDTransform(Transform):
    """Apply drawn photometric changes to an H x W x 3 uint8 image (RGB or BGR); None = that step skipped.

    Args:
        img_format: "RGB" or "BGR", the channel order of the images it is applied to.
        brightness: added to every channel (0-255 scale).
        contrast: multiplies every channel.
        saturation: multiplies the HSV saturation.
        hue: added to the HSV hue (OpenCV's 0-180 scale, wrapped around).
        contrast_first: contrast before (True) or after (False) saturation and hue.
    """

    def __init__(self, img_format: str, brightness: Optional[float], contrast: Optional[float],
                 saturation: Optional[float], hue: Optional[int], contrast_first: bool):
        super().__init__()
        if img_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.COLOR_AUG_SSD needs INPUT.FORMAT 'RGB' or 'BGR', got {img_format!r}")
        self._set_attributes(locals())

    def _hsv(self, img: np.ndarray, channel: int, change) -> np.ndarray:
        to_hsv, from_hsv = ((cv2.COLOR_RGB2HSV, cv2.COLOR_HSV2RGB) if self.img_format == "RGB"
                            else (cv2.COLOR_BGR2HSV, cv2.COLOR_HSV2BGR))
        hsv = cv2.cvtColor(img, to_hsv)
        hsv[:, :, channel] = change(hsv[:, :, channel])
        return cv2.cvtColor(hsv, from_hsv)

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"ColorAugSSDTransform takes H x W x 3 uint8 images, got {img.dtype} {img.shape}")
        if self.brightness is not None:
            img = _affine_uint8(img, shift=self.brightness)
        if self.contrast is not None and self.contrast_first:
            img = _affine_uint8(img, scale=self.contrast)
        if self.saturation is not None:
            img = self._hsv(img, 1, lambda s: _affine_uint8(s, scale=self.saturation))
        if self.hue is not None:
            img = self._hsv(img, 0, lambda h: ((h.astype(np.int32) + self.hue) % 180).astype(np.uint8))
        if self.contrast is not None and not self.contrast_first:
            img = _affine_uint8(img, scale=self.contrast)
        return img

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return segmentation

    def inverse(self) -> Transform:
        return NoOpTransform()  # photometric only: nothing geometric to undo


class ColorAugSSD(T.Augmentation):
    """Draws a :class:`ColorAugSSDTransform`: each step on with probability 1/2, brightness shift in
    ``[-brightness_delta, brightness_delta]``, contrast and saturation factors in their ranges, hue shift in
    ``[-hue_delta, hue_delta]`` (SSD's and CAT-Seg's defaults)."""

    def __init__(self, img_format: str, brightness_delta: float = 32, contrast_range=(0.5, 1.5),
                 saturation_range=(0.5, 1.5), hue_delta: int = 18):
        super().__init__()
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> ColorAugSSDTransform:
        coin = lambda: np.random.rand() < 0.5  # noqa: E731
        return ColorAugSSDTransform(
            self.img_format,
            brightness=np.random.uniform(-self.brightness_delta, self.brightness_delta) if coin() else None,
            contrast=np.random.uniform(*self.contrast_range) if coin() else None,
            saturation=np.random.uniform(*self.saturation_range) if coin() else None,
            hue=int(np.random.randint(-self.hue_delta, self.hue_delta + 1)) if coin() else None,
            contrast_first=coin(),
        )
