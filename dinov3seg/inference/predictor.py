"""Predictor for your own images and words: one RGB image + a vocabulary -> per-class scores / labels.

    predictor = VocabularyPredictor(cfg)              # builds the model, loads cfg.MODEL.WEIGHTS
    predictor.set_vocabulary(["cat", "dog, puppy", "grass"])
    labels = predictor.segment(read_image_rgb("photo.jpg"))   # H x W class indexes
"""
import logging
from typing import List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["VocabularyPredictor", "pil_to_rgb", "read_image_rgb", "to_uint8_rgb"]

logger = logging.getLogger(__name__)


def to_uint8_rgb(array: np.ndarray) -> np.ndarray:
    """Any decoded image array -> H x W x 3 uint8 RGB.

    Grayscale (H x W or H x W x 1) is repeated to 3 channels; an alpha channel (4 or 2 channels) is
    dropped; 16-bit integers are scaled by 255/65535; floats in [0, 1] are scaled by 255, other float
    or integer ranges are stretched from their min-max to 0-255.
    """
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    elif a.ndim == 3 and a.shape[2] == 2:  # gray + alpha
        a = np.stack([a[:, :, 0]] * 3, axis=-1)
    elif a.ndim == 3 and a.shape[2] == 4:
        a = a[:, :, :3]
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"cannot interpret an image array of shape {array.shape} as RGB")
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    lo, hi = float(a.min()), float(a.max())
    if np.issubdtype(a.dtype, np.integer) and lo >= 0 and hi <= 255:
        scaled = a.astype(np.float64)
    elif np.issubdtype(a.dtype, np.integer) and lo >= 0 and hi <= 65535:
        scaled = a.astype(np.float64) * (255.0 / 65535.0)
    elif np.issubdtype(a.dtype, np.floating) and lo >= 0 and hi <= 1:
        scaled = a.astype(np.float64) * 255.0
    else:
        scaled = (a.astype(np.float64) - lo) * (255.0 / max(hi - lo, 1e-12))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def pil_to_rgb(img: Image.Image) -> np.ndarray:
    """A PIL image as H x W x 3 uint8 RGB (EXIF orientation applied; grayscale, palette, RGBA, CMYK,
    16-bit and float images converted)."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("RGB", "L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        array = np.asarray(img)
    elif img.mode in ("LA", "La", "1"):
        array = np.asarray(img.convert("L"))
    else:  # P, PA, RGBA, RGBa, CMYK, YCbCr, LAB, HSV, ...
        array = np.asarray(img.convert("RGB"))
    if array.size == 0:
        raise ValueError("the image has no pixels")
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("="))
    return to_uint8_rgb(array)


def read_image_rgb(path: str, max_side: int = 0) -> np.ndarray:
    """Read an image file as H x W x 3 uint8 RGB (see :func:`pil_to_rgb`). Raises ValueError with the
    path if it is unreadable (not an image, truncated, or too large for Pillow to decode safely).

    ``max_side`` > 0 downscales (aspect kept) so the longer side is at most ``max_side``; a JPEG is
    then decoded at a reduced scale directly, so a huge photo never occupies memory at full size."""
    try:
        with Image.open(path) as img:
            if max_side > 0 and max(img.size) > max_side:
                img.draft("RGB", (max_side, max_side))  # JPEG only: DCT scaling, at least max_side
            img.load()
            rgb = pil_to_rgb(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot read image '{path}': {e}") from None
    height, width = rgb.shape[:2]
    if max_side > 0 and max(height, width) > max_side:
        scale = max_side / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR, reducing_gap=2.0))
    return rgb


def _load_checkpoint(model: torch.nn.Module, path: str) -> None:
    try:
        from dinov3seg.checkpoint import DINOv3SegCheckpointer as Checkpointer
    except ImportError:
        from detectron2.checkpoint import DetectionCheckpointer as Checkpointer
    Checkpointer(model).load(path)


class VocabularyPredictor:
    """An open-vocabulary segmenter for single images, in eval mode, without gradients.

    The image is first resized like Detectron2's test mapper (short side ``INPUT.MIN_SIZE_TEST``, long
    side at most ``INPUT.MAX_SIZE_TEST``); the model (LGA inside) scores it at that size.
    """

    def __init__(self, cfg, model: Optional[torch.nn.Module] = None):
        """
        Args:
            cfg: a config with the dinov3seg keys.
            model: an already built model (skips ``build_model`` and the checkpoint).
        """
        self.cfg = cfg.clone()
        if model is None:
            model = build_model(self.cfg)
            if self.cfg.MODEL.WEIGHTS:
                _load_checkpoint(model, self.cfg.MODEL.WEIGHTS)
            elif not getattr(model, "TRAINING_FREE", False):
                logger.warning("MODEL.WEIGHTS is empty: the segmentation head is untrained (random).")
            # Inference only: nothing here trains, so even a tuned text tower is frozen (its embeddings can then
            # be cached on disk, see TextEmbedder).
            model.requires_grad_(False)
        self.model = model.eval()
        self.resize = T.ResizeShortestEdge(
            [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
        )
        self.class_names: List[str] = []

    def set_vocabulary(self, class_names: List[str]) -> None:
        """T class names; each may hold comma-separated synonyms ("sofa, couch")."""
        self.model.set_vocabulary(list(class_names))
        self.class_names = list(class_names)

    @torch.no_grad()
    def scores(self, image: np.ndarray) -> torch.Tensor:
        """H x W x 3 uint8 RGB -> T x h x w float scores at the test resolution (h x w = the image
        after the test resize, see the class doc)."""
        return self.scores_batch([image])[0]

    @torch.no_grad()
    def scores_batch(self, images: List[np.ndarray]) -> List[torch.Tensor]:
        """B images (H x W x 3 uint8 RGB) in one model call -> B tensors of T x h x w scores, as :meth:`scores`."""
        if not self.class_names:
            raise RuntimeError("call set_vocabulary(class_names) first")
        inputs = []
        for image in images:
            image = to_uint8_rgb(image)
            resized = self.resize.get_transform(image).apply_image(image)
            tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1))).float()
            inputs.append({"image": tensor, "height": resized.shape[0], "width": resized.shape[1]})
        return [out["sem_seg"].float() for out in self.model(inputs)]

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> torch.Tensor:
        """H x W x 3 uint8 RGB -> T x H x W float scores at the image's own size."""
        scores = self.scores(image)
        if scores.shape[-2:] != image.shape[:2]:
            scores = F.interpolate(scores[None], size=image.shape[:2], mode="bilinear", align_corners=False)[0]
        return scores.cpu()

    @torch.no_grad()
    def segment(self, image: np.ndarray) -> np.ndarray:
        """H x W x 3 uint8 RGB -> H x W int64 class indexes (argmax at the test resolution, then
        nearest-neighbour resized: memory stays T x test size even for huge photos)."""
        labels = self.scores(image).argmax(dim=0)
        if labels.shape != image.shape[:2]:
            labels = F.interpolate(labels[None, None].float(), size=image.shape[:2], mode="nearest")[0, 0].long()
        return labels.cpu().numpy()
