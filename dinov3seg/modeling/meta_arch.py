"""DINOv3Seg: frozen DINOv3 / dinov3.txt / AnyUp / SAM encoders + the trainable dinov3.seg head."""
import contextlib
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY, build_sem_seg_head
from detectron2.structures import ImageList
from torch import nn

from ..data.vocabulary import load_class_names, validate_vocabulary
from ..inference.lga import LocalGlobalAggregation
from .encoders import build_anyup, build_dinotxt, build_sam, sam_sizes
from .encoders.sam import NECK_CHANNELS as SAM_NECK_CHANNELS
from .compile import compile_model
from .loss import sem_seg_bce_loss
from .meta_arch_common import configured_test_vocabulary, patch_features
from .precision import FollowsPrecision, check_precision, fp32_region
from .encoders.tokenizer import build_tokenizer
from .text_embeddings import TextEmbedder

PATCH_SIZE = 16


def head_input_shape(cfg) -> Dict[str, ShapeSpec]:
    """What the frozen encoders feed the head, from the config alone (no encoder is built):
    ``patches`` (D channels, stride 16 or AnyUp's), ``text`` (2D), and with SAM ``guidance`` (its neck)
    and ``decoder_guidance`` (its hooked blocks)."""
    dim = cfg.MODEL.DINOV3.EMBED_DIM
    stride = cfg.MODEL.ANYUP.OUTPUT_STRIDE if cfg.MODEL.ANYUP.ENABLED else PATCH_SIZE
    shape = {"patches": ShapeSpec(channels=dim, stride=stride), "text": ShapeSpec(channels=2 * dim)}
    if cfg.MODEL.SAM.ENABLED:
        sizes = sam_sizes(cfg)
        n_global, stages = len(sizes["global_attn_indexes"]), len(cfg.MODEL.DINOV3SEG.DECODER_DIMS)
        guides = list(cfg.MODEL.SAM.DECODER_GUIDANCE)
        if len(guides) != stages or not all(0 <= i < n_global for i in guides):
            raise ValueError(f"MODEL.SAM.DECODER_GUIDANCE must hold one index per decoder stage ({stages}), "
                             f"each in [0, {n_global}); got {guides}")
        shape["guidance"] = ShapeSpec(channels=SAM_NECK_CHANNELS, stride=PATCH_SIZE)
        shape["decoder_guidance"] = ShapeSpec(channels=sizes["embed_dim"], stride=PATCH_SIZE)
    return shape


@META_ARCH_REGISTRY.register()
class DINOv3Seg(FollowsPrecision, nn.Module):
    """Open-vocabulary semantic segmentation with dinov3.txt.

    Training takes VIEW_SIZE crops and returns ``{"loss_sem_seg": loss}``; inference runs
    Local-Global Aggregation and returns ``[{"sem_seg": (T, height, width) scores}]``.
    """

    # Encoder submodules: frozen except tuned text parameters, rebuilt from their weight files on
    # load (text_embedder wraps dinotxt.text).
    ENCODERS = ("dinotxt", "anyup", "sam", "text_embedder")

    @configurable
    def __init__(self, *, dinotxt: nn.Module, anyup: Optional[nn.Module], sam: Optional[nn.Module],
                 sem_seg_head: nn.Module, text_embedder: TextEmbedder, lga: LocalGlobalAggregation,
                 pixel_mean, pixel_std, view_size: int, use_vision_head: bool, anyup_output_stride: int,
                 sam_decoder_guidance: List[int], train_class_names: List[str], test_class_names: List[str],
                 ignore_value: int, ignore_as_negative: bool, precision: str, init_logits_at_class_prior: bool = False,
                 compile: bool = False, reuse_freed_cpu_memory: bool = True):
        super().__init__()
        self.dinotxt, self.anyup, self.sam = dinotxt, anyup, sam
        self.sem_seg_head = sem_seg_head
        if init_logits_at_class_prior:
            sem_seg_head.init_logits_at_class_prior(len(train_class_names))
        self.text_embedder = text_embedder
        self.lga = lga
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.view_size = view_size
        self.use_vision_head = use_vision_head
        self.anyup_output_stride = anyup_output_stride
        self.sam_decoder_guidance = list(sam_decoder_guidance)
        self.train_class_names = train_class_names
        self.test_class_names = test_class_names
        self.ignore_value = ignore_value
        self.ignore_as_negative = ignore_as_negative
        # norms run in fp32 under bf16 autocast (see modeling/precision.py); CPU runs reuse freed buffers
        self._init_precision(precision, reuse_freed_cpu_memory)
        self.compiled = compile_model(self) if compile else []

    @classmethod
    def from_config(cls, cfg):
        head_cfg = cfg.MODEL.DINOV3SEG
        view = head_cfg.VIEW_SIZE
        if view <= 0 or view % PATCH_SIZE:
            raise ValueError(f"MODEL.DINOV3SEG.VIEW_SIZE must be a positive multiple of {PATCH_SIZE} "
                             f"(the DINOv3 patch size), got {view}; e.g. 384 gives a 24x24 feature grid.")
        check_precision(head_cfg.PRECISION)
        dinotxt = build_dinotxt(cfg)
        anyup = build_anyup(cfg)
        sam = build_sam(cfg, view)
        input_shape = head_input_shape(cfg)
        stride = input_shape["patches"].stride
        train_names = load_class_names(head_cfg.TRAIN_CLASS_JSON, cfg.DATASETS.TRAIN,
                                       "MODEL.DINOV3SEG.TRAIN_CLASS_JSON", "DATASETS.TRAIN")
        # until set_vocabulary, unless a test vocabulary is configured
        test_names = configured_test_vocabulary(cfg) or train_names
        return dict(
            dinotxt=dinotxt, anyup=anyup, sam=sam, sem_seg_head=build_sem_seg_head(cfg, input_shape),
            text_embedder=TextEmbedder(cfg, text_encoder=dinotxt.text, tokenizer=build_tokenizer()),
            lga=LocalGlobalAggregation(cfg), pixel_mean=cfg.MODEL.PIXEL_MEAN, pixel_std=cfg.MODEL.PIXEL_STD,
            view_size=view, use_vision_head=cfg.MODEL.DINOTXT.USE_VISION_HEAD, anyup_output_stride=stride,
            sam_decoder_guidance=cfg.MODEL.SAM.DECODER_GUIDANCE, train_class_names=train_names,
            test_class_names=test_names, ignore_value=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            ignore_as_negative=head_cfg.IGNORE_AS_NEGATIVE, precision=head_cfg.PRECISION,
            init_logits_at_class_prior=head_cfg.INIT_LOGITS_AT_CLASS_PRIOR, compile=cfg.MODEL.COMPILE,
            reuse_freed_cpu_memory=cfg.MODEL.REUSE_FREED_CPU_MEMORY)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def sem_seg_score_type(self) -> str:
        """What the test-time ``sem_seg`` holds: "sigmoid" probabilities (LGA averages probabilities) or
        per-class sigmoid "logit"s; read by the API to threshold "none of these" pixels."""
        return "sigmoid" if self.lga.average == "probabilities" else "logit"

    def set_vocabulary(self, class_names: List[str]) -> None:
        """Set the class names used at test time (each may hold comma-separated synonyms)."""
        self.test_class_names = validate_vocabulary(list(class_names), "the test vocabulary")

    def random_init_encoders(self) -> List[str]:
        """Names of the encoder parts that no weight file filled (e.g. the quickstart's): a checkpoint holds them."""
        return [name for name, module in self.named_modules() if getattr(module, "random_init", False)]

    def trainable_state_dict(self) -> Dict[str, torch.Tensor]:
        """What a checkpoint holds: the head, any tuned encoder parameters and the encoder parts built without
        a weight file (their random values cannot be rebuilt). Encoders read from files are rebuilt from them."""
        tuned = {n for n, p in self.named_parameters() if p.requires_grad}
        stored = tuple(f"{m}." for m in self.random_init_encoders())
        return {k: v for k, v in self.state_dict().items()
                if k in tuned or k.startswith(stored) or not k.startswith(tuple(f"{m}." for m in self.ENCODERS))}

    def _text(self, class_names: List[str]) -> torch.Tensor:
        """Class embeddings (T, P, 2D). In fp32 unless the text tower is being tuned: they are cached once per
        vocabulary, so the cache serves either precision and costs nothing per image."""
        tuned = torch.is_grad_enabled() and any(p.requires_grad for p in self.text_embedder.parameters())
        with contextlib.nullcontext() if tuned else fp32_region(self.device):
            return self.text_embedder(class_names)

    def segment_views(self, views: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """
        Args:
            views: (V, 3, S, S) normalised views, S = VIEW_SIZE.
            text: (T, P, 2D) class embeddings.
        Returns:
            (V, T, S/4, S/4) logits.
        """
        grid = views.shape[-1] // PATCH_SIZE
        with torch.no_grad():
            patches = patch_features(self.dinotxt, views, use_head=self.use_vision_head, anyup=self.anyup,
                                     output_stride=self.anyup_output_stride)
            guidance = decoder_guidance = None
            if self.sam is not None:
                size = self.sam.image_size
                sam_out = self.sam(views if size == views.shape[-1] else F.interpolate(
                    views, size=(size, size), mode="bilinear", align_corners=False))
                on_grid = lambda x: x if x.shape[-1] == grid else F.interpolate(  # noqa: E731
                    x, size=(grid, grid), mode="bilinear", align_corners=False)
                guidance = on_grid(sam_out["neck"])
                decoder_guidance = [on_grid(sam_out["guidance"][i]) for i in self.sam_decoder_guidance]
        return self.sem_seg_head(patches, text, guidance, decoder_guidance)

    def forward(self, batched_inputs: List[Dict[str, torch.Tensor]]):
        """batched_inputs: Detectron2 dicts with "image" (3, H, W) RGB 0-255, "sem_seg" (H, W) in
        training, optional "height"/"width" at test time."""
        if self.training:
            with self._autocast():
                return self._training_loss(batched_inputs)
        text = self._text(self.test_class_names)
        results = []
        for x in batched_inputs:
            image = (x["image"].to(self.device).float() - self.pixel_mean) / self.pixel_std
            # One resize, from the LGA canvas straight to the original size (as CAT-Seg). Views run under the
            # autocast; the LGA stitching and resizing accumulate in fp32 (by design).
            out_hw = (x.get("height", image.shape[-2]), x.get("width", image.shape[-1]))
            scores = self.lga(image, lambda views: self._segment_views_autocast(views, text), out_hw=out_hw)
            results.append({"sem_seg": scores.float()})
        return results

    def _segment_views_autocast(self, views: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return self.segment_views(views, text).float()

    def _training_loss(self, batched_inputs):
        images = [(x["image"].to(self.device).float() - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        largest = max(max(i.shape[-2:]) for i in images)
        if largest > self.view_size:
            raise ValueError(f"training images must be at most MODEL.DINOV3SEG.VIEW_SIZE={self.view_size} "
                             f"pixels per side (got {largest}); enable INPUT.CROP with that size.")
        images = ImageList.from_tensors(images, self.view_size).tensor
        targets = ImageList.from_tensors([x["sem_seg"].to(self.device) for x in batched_inputs], self.view_size,
                                         pad_value=self.ignore_value).tensor
        text = self._text(self.train_class_names)
        logits = self.segment_views(images, text)
        logits = F.interpolate(logits.float(), size=targets.shape[-2:], mode="bilinear", align_corners=False)
        loss = sem_seg_bce_loss(logits, targets, self.ignore_value, self.ignore_as_negative)
        return {"loss_sem_seg": loss}
