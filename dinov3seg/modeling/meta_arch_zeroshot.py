"""DINOTxtZeroShot: training-free open-vocabulary segmentation with the public DINOv3 + dinov3.txt weights.

By default this is Meta's dense zero-shot recipe (``notebooks/dinotxt_segmentation_inference.ipynb`` of
facebookresearch/dinov3, DINOv3 paper Table 16), step for step (T classes, D = backbone width):

1. text: every class name in the 80 ImageNet templates through the text tower; the patch-aligned half of
   each embedding L2-normalised, averaged over the templates and L2-normalised again -> (T, D);
2. image: short side resized to 512 with Pillow's bicubic (long side ``int(512 * long / short)``),
   ImageNet normalisation;
3. windows of 384 at stride 192, the last one of each row and column flush with the border; each window is
   stretched (bicubic) to a multiple of 16, and the cosine between its L2-normalised raw backbone patch
   tokens and the text is upsampled (bilinear) to the window and turned into a softmax over classes; the
   softmaxes are summed and divided by the number of windows covering each pixel;
4. bilinear resize to the original image size.

Switches (one config key each): MODEL.DINOTXT.USE_VISION_HEAD (vision-head instead of backbone tokens),
MODEL.ANYUP.ENABLED (AnyUp refinement of the patch features) and MODEL.ZEROSHOT.MODE: "whole" (one pass on
the resized image) or "lga" (our Local-Global Aggregation, TEST.LGA.*, instead of steps 2-3).
Scores are softmax probabilities over the vocabulary. MODEL.DINOV3SEG.PRECISION applies as in the trained
model: the encoders run under bf16 autocast when it picks bf16; the cosines, softmaxes and window averaging
stay fp32. ``fp32`` reproduces Meta's numbers exactly (``parity/dinotxt_zeroshot_small.pt``).
"""
import math
import os
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.data.transforms import ResizeTransform
from detectron2.modeling import META_ARCH_REGISTRY
from PIL import Image
from torch import nn

from ..data.vocabulary import validate_vocabulary
from ..inference.lga import LocalGlobalAggregation, window_offsets
from .encoders import build_anyup, build_dinotxt
from .encoders.tokenizer import build_tokenizer
from .encoders.weights import WEIGHT_SPECS, WeightFileError, weight_path
from .head.cost_volume import cosine_cost_volume, select_text_halves
from .meta_arch_common import configured_test_vocabulary, patch_features, to_output_size
from .precision import FollowsPrecision, fp32_region
from .text_embeddings import TextEmbedder, average_templates


MODES = ("slide", "whole", "lga")


def window_probabilities(cosines: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """(N, T, h, w) cosines -> (N, T, *size): bilinear upsampling, then softmax over the T classes."""
    return F.interpolate(cosines, size=size, mode="bilinear", align_corners=False).softmax(dim=1)


def check_weight_files(cfg) -> None:
    """Raise one error naming every missing DINOv3 / dinov3.txt weight file (the only files this model needs)."""
    lines = []
    for name in ("dinov3", "dinotxt"):
        spec = WEIGHT_SPECS[name]
        try:
            path = weight_path(cfg, name)
        except WeightFileError as err:  # a bare file name found in none of the weights folders
            lines.append(f"  {str(err).split(' Put the file')[0]}")
            continue
        if not path or not os.path.exists(path):
            state = "is not set" if not path else f"= '{path}' does not exist"
            lines.append(f"  {spec['config_key']} {state}: point it to {spec['expected_name']}")
    if lines:
        raise WeightFileError(
            "The training-free model (DINOTxtZeroShot) needs the DINOv3 backbone and dinov3.txt weight files, "
            "and nothing else:\n" + "\n".join(lines) + f"\nRequest them at {WEIGHT_SPECS['dinov3']['request_url']}.")


@META_ARCH_REGISTRY.register()
class DINOTxtZeroShot(FollowsPrecision, nn.Module):
    """Training-free segmentation with dinov3.txt (see the module doc).

    Takes the same inputs as ``DINOv3Seg`` (Detectron2 dicts with "image" (3, H, W) RGB 0-255, optional
    "height" / "width"), the same vocabulary (``set_vocabulary``, TEST_CLASS_JSON or DATASETS.TEST) and returns
    ``[{"sem_seg": (T, height, width) softmax probabilities}]``. Nothing is trained; no MODEL.WEIGHTS.
    """

    sem_seg_score_type = "softmax"  # what "sem_seg" holds (the API's "none of these" threshold reads it)
    TRAINING_FREE = True  # no checkpoint: train_net.py --eval-only and eval.sh run without MODEL.WEIGHTS
    # Meta's published mIoU of this recipe with the ViT-L dinov3.txt (DINOv3 paper, Table 16), by benchmark.
    PUBLISHED_MIOU = {"ade20k_150_sem_seg_val": 24.7}
    PUBLISHED_SOURCE = "DINOv3 paper, Table 16 (Meta's recipe, ViT-L dinov3.txt)"

    @configurable
    def __init__(self, *, dinotxt: nn.Module, anyup: Optional[nn.Module], text_embedder: TextEmbedder,
                 lga: Optional[LocalGlobalAggregation], pixel_mean, pixel_std,
                 test_class_names: Optional[List[str]] = None, mode: str = "slide", short_side: int = 512,
                 window: int = 384, stride: int = 192, use_vision_head: bool = False, anyup_output_stride: int = 16,
                 precision: str = "fp32", reuse_freed_cpu_memory: bool = True):
        """
        Args:
            dinotxt: the frozen ``DINOTxt`` (backbone, vision head, text tower).
            anyup: frozen AnyUp refining the patch features, or None.
            text_embedder: class names -> (T, P, 2D) prompt embeddings (cached).
            lga: Local-Global Aggregation, used when ``mode == "lga"``; its views' scores are averaged as given.
            pixel_mean, pixel_std: RGB normalisation, 0-255 scale.
            test_class_names: the vocabulary, or None until ``set_vocabulary``.
            mode: "slide" (Meta's windows), "whole" (one pass) or "lga".
            short_side: "slide" / "whole": the short side is resized to this first (0 = keep the size).
            window, stride: "slide": window side and stride.
            use_vision_head: vision-head patch tokens instead of the raw backbone ones.
            anyup_output_stride: AnyUp's output stride (16, 8 or 4).
            precision: MODEL.DINOV3SEG.PRECISION ("fp32": Meta's numbers exactly; "bf16"; "auto").
            reuse_freed_cpu_memory: MODEL.REUSE_FREED_CPU_MEMORY (see ``modeling/cpu_memory.py``).
        """
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"MODEL.ZEROSHOT.MODE must be one of {MODES}, got {mode!r}")
        if mode == "lga" and lga is None:
            raise ValueError('MODEL.ZEROSHOT.MODE "lga" needs a LocalGlobalAggregation')
        if short_side < 0 or window <= 0 or stride <= 0:
            raise ValueError(f"MODEL.ZEROSHOT.SHORT_SIDE ({short_side}) must be >= 0, WINDOW ({window}) and "
                             f"STRIDE ({stride}) positive")
        self.dinotxt, self.anyup, self.text_embedder, self.lga = dinotxt, anyup, text_embedder, lga
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False)
        self.test_class_names = test_class_names or []
        self.mode, self.short_side, self.window, self.stride = mode, short_side, window, stride
        self.use_vision_head = use_vision_head
        self.anyup_output_stride = anyup_output_stride
        self._init_precision(precision, reuse_freed_cpu_memory)
        self.eval()

    @classmethod
    def from_config(cls, cfg):
        c = cfg.MODEL.ZEROSHOT
        problems = []
        if cfg.MODEL.SAM.ENABLED:
            problems.append("MODEL.SAM.ENABLED must be False (SAM guides the trained head only)")
        if cfg.MODEL.DINOTXT.TEXT_FINETUNE != "none":
            problems.append("MODEL.DINOTXT.TEXT_FINETUNE must be 'none' (nothing is trained)")
        if problems:
            raise ValueError("DINOTxtZeroShot (configs/dinotxt_zeroshot.yaml): " + "; ".join(problems))
        check_weight_files(cfg)
        dinotxt = build_dinotxt(cfg)
        return dict(
            dinotxt=dinotxt, anyup=build_anyup(cfg),
            text_embedder=TextEmbedder(cfg, text_encoder=dinotxt.text, tokenizer=build_tokenizer()),
            lga=LocalGlobalAggregation(cfg, average="logits") if c.MODE == "lga" else None,
            pixel_mean=cfg.MODEL.PIXEL_MEAN, pixel_std=cfg.MODEL.PIXEL_STD,
            test_class_names=configured_test_vocabulary(cfg), mode=c.MODE, short_side=c.SHORT_SIDE,
            window=c.WINDOW, stride=c.STRIDE, use_vision_head=cfg.MODEL.DINOTXT.USE_VISION_HEAD,
            anyup_output_stride=cfg.MODEL.ANYUP.OUTPUT_STRIDE, precision=cfg.MODEL.DINOV3SEG.PRECISION,
            reuse_freed_cpu_memory=cfg.MODEL.REUSE_FREED_CPU_MEMORY)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def set_vocabulary(self, class_names: List[str]) -> None:
        """Set the class names used at test time (each may hold comma-separated synonyms)."""
        self.test_class_names = validate_vocabulary(list(class_names), "the test vocabulary")

    def trainable_state_dict(self) -> Dict[str, torch.Tensor]:
        """Nothing is trained: a checkpoint of this model is empty (the encoders come from their weight files)."""
        return {}

    def train(self, mode: bool = True):
        if mode:
            raise RuntimeError("DINOTxtZeroShot is training-free: there is nothing to train. Run train_net.py "
                               "with --eval-only, eval.sh or demo/demo.py.")
        return super().train(False)

    # ------------------------------------------------------------------ recipe steps
    def text_features(self, class_names: List[str]) -> torch.Tensor:
        """T class names -> (T, D): template-averaged, L2-normalised patch-aligned text embeddings."""
        return average_templates(select_text_halves(self.text_embedder(class_names), ["local"]))

    def resize(self, image: torch.Tensor) -> torch.Tensor:
        """(3, H, W) RGB 0-255 -> (3, h, w) float, short side ``short_side`` (Pillow bicubic on the uint8
        image, long side truncated, as Meta's ``ShortSideResize``); unchanged if already that size or 0."""
        h, w = image.shape[-2:]
        size = self.short_side
        if not size or min(h, w) == size:
            return image.float()
        new_h, new_w = (int(size * h / w), size) if w < h else (size, int(size * w / h))
        array = image.detach().permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
        resized = ResizeTransform(h, w, new_h, new_w, Image.BICUBIC).apply_image(array)
        return torch.from_numpy(np.array(resized)).permute(2, 0, 1).float()

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """(3, H, W) RGB 0-255 -> normalised, on the model's device."""
        return (image.to(self.device).float() - self.pixel_mean) / self.pixel_std

    def cosines(self, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images, (T, D) text -> (B, T, h, w) cosines on the feature grid. H and W are
        first stretched (bicubic) to multiples of the patch size, as Meta's ``encode_image`` does. The encoders
        run in the picked precision; the cosines in fp32 (by design: the softmax reads their small differences)."""
        p = self.dinotxt.backbone.patch_size
        size = (math.ceil(images.shape[-2] / p) * p, math.ceil(images.shape[-1] / p) * p)
        if tuple(images.shape[-2:]) != size:
            images = F.interpolate(images, size=size, mode="bicubic", align_corners=False)
        with self._autocast():
            features = patch_features(self.dinotxt, images, use_head=self.use_vision_head, anyup=self.anyup,
                                      output_stride=self.anyup_output_stride)
        with fp32_region(self.device):
            return cosine_cost_volume(features, text[:, None])[:, 0]

    def window_boxes(self, height: int, width: int) -> List[Tuple[int, int, int, int]]:
        """(y1, y2, x1, x2) of the sliding windows on a height x width image, row-major."""
        wh, ww = min(self.window, height), min(self.window, width)
        return [(y, y + wh, x, x + ww) for y in window_offsets(height, self.window, self.stride)
                for x in window_offsets(width, self.window, self.stride)]

    def slide_probabilities(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(3, H, W) normalised image, (T, D) text -> (T, H, W): per-window softmaxes averaged over the windows."""
        height, width = image.shape[-2:]
        boxes = self.window_boxes(height, width)
        cosines = self.cosines(torch.stack([image[:, y1:y2, x1:x2] for y1, y2, x1, x2 in boxes]), text)
        probs = image.new_zeros(len(text), height, width)
        counts = image.new_zeros(height, width)
        for (y1, y2, x1, x2), cos in zip(boxes, cosines):
            probs[:, y1:y2, x1:x2] += window_probabilities(cos[None], (y2 - y1, x2 - x1))[0]
            counts[y1:y2, x1:x2] += 1
        return probs / counts

    def segment(self, batched_input: Dict[str, torch.Tensor], text: torch.Tensor) -> torch.Tensor:
        """One input dict, (T, D) text -> (T, height, width) probabilities."""
        image = batched_input["image"]
        if self.mode == "lga":
            # One resize, from the LGA canvas straight to the output size (as the trained model).
            out_hw = (batched_input.get("height", image.shape[-2]), batched_input.get("width", image.shape[-1]))
            return self.lga(self.normalize(image), out_hw=out_hw,
                            segment_views=lambda views: window_probabilities(self.cosines(views, text), views.shape[-2:]))
        resized = self.normalize(self.resize(image))
        if self.mode == "whole":
            return to_output_size(self.cosines(resized[None], text)[0], batched_input).softmax(dim=0)
        return to_output_size(self.slide_probabilities(resized, text), batched_input)

    def forward(self, batched_inputs: List[Dict[str, torch.Tensor]]) -> List[Dict[str, torch.Tensor]]:
        """batched_inputs: Detectron2 dicts with "image" (3, H, W) RGB 0-255, optional "height" / "width"."""
        if self.training:
            raise RuntimeError("DINOTxtZeroShot is training-free; call .eval() (it has no training forward).")
        if not self.test_class_names:
            raise RuntimeError("no vocabulary: call set_vocabulary(class_names), or set MODEL.DINOV3SEG."
                               "TEST_CLASS_JSON or DATASETS.TEST")
        with torch.no_grad():
            text = self.text_features(self.test_class_names)
            return [{"sem_seg": self.segment(x, text)} for x in batched_inputs]
