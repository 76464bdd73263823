"""The dinov3.seg head: cost volume -> cost embedding -> N x (spatial + class refinement) -> decoder.

This is CAT-Seg's ``Aggregator`` (cvlab-kaist/CAT-Seg, ``cat_seg/modeling/transformer/model.py``) with the
transposed convolutions of its meta-architecture: with TEXT_CHANNELS ["local"] it reproduces the official module
(``verify_parity`` kind ``catseg_aggregator``; weights mapped by ``catseg_weights.checkpoint_filter_fn``).
DESIGN.md's departures are config keys, listed in docs/catseg_differences.md.
"""
import math
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn

from ..text_embeddings import load_prompt_templates
from .class_refinement import ClassRefinement
from .cost_volume import CostEmbedding, check_text_halves, cosine_cost_volume, select_text_halves
from .decoder import UpsamplingDecoder
from .spatial_refinement import SpatialRefinement

PRUNED_LOGIT = -100.0  # logit of the classes beyond the top pad_len (CAT-Seg)


def empty_in_layout_of(like: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """An uninitialised tensor of ``shape`` (the rank of ``like``) whose dims lie in memory in the order of
    ``like``'s (e.g. (B, T, C, H, W) stored as B, T, H, W, C)."""
    order = sorted(range(like.dim()), key=lambda d: -like.stride(d))  # outermost first
    return like.new_empty([shape[d] for d in order]).permute([order.index(d) for d in range(like.dim())])


@SEM_SEG_HEADS_REGISTRY.register()
class DINOv3SegHead(nn.Module):
    """Turns patch features, class text and image guidance into per-class logits.

    Inputs (see ``forward``) come from the frozen encoders; ``input_shape`` names them:
    ``"patches"`` (dinov3.txt patch features, D channels), ``"text"`` (2D channels per
    template), ``"guidance"`` (SAM neck, optional) and ``"decoder_guidance"`` (hooked SAM
    blocks, optional), all at stride 16 of the view unless AnyUp upsampled the patches.
    """

    @configurable
    def __init__(self, *, input_shape: Dict[str, ShapeSpec], text_channels: List[str], num_templates: int,
                 embed_dim: int = 128, guidance_dim: int = 128, text_guidance_dim: int = 128, num_rounds: int = 2,
                 window_size: int = 12, num_heads: int = 4, class_attention: str = "linear",
                 class_pooling: Sequence[int] = (2, 2), pad_len: int = 256, decoder_dims=(64, 32),
                 decoder_guidance_dims=(32, 16), decoder_guidance_upsample_dims=(256, 128),
                 class_chunk_size: int = 0):
        super().__init__()
        self.text_channels = check_text_halves(text_channels)
        if pad_len < 0:
            raise ValueError(f"MODEL.DINOV3SEG.CLASS_PAD_LEN must be >= 0 (0 = no padding, no pruning), got {pad_len}")
        self.pad_len = pad_len
        self.class_chunk_size = class_chunk_size
        self.patch_stride = input_shape["patches"].stride
        text_dim = input_shape["text"].channels // 2 * len(self.text_channels)
        self.cost_embedding = CostEmbedding(num_templates * len(self.text_channels), embed_dim)
        self.text_projection = nn.Sequential(nn.Linear(text_dim, text_guidance_dim), nn.ReLU())
        has_guidance = "guidance" in input_shape
        self.guidance_projection = None
        if has_guidance:
            self.guidance_projection = nn.Sequential(
                nn.Conv2d(input_shape["guidance"].channels, guidance_dim, 3, padding=1), nn.ReLU())
        self.decoder_guidance_projections = None
        if "decoder_guidance" in input_shape:
            if not len(decoder_dims) == len(decoder_guidance_dims) == len(decoder_guidance_upsample_dims):
                raise ValueError("MODEL.DINOV3SEG.DECODER_DIMS, DECODER_GUIDANCE_DIMS and "
                                 "DECODER_GUIDANCE_UPSAMPLE_DIMS need one entry per decoder stage; got "
                                 f"{list(decoder_dims)}, {list(decoder_guidance_dims)}, "
                                 f"{list(decoder_guidance_upsample_dims)}")
            c = input_shape["decoder_guidance"].channels
            # CAT-Seg: a transposed conv to the stage's resolution (its meta-architecture's upsample1/2, no
            # activation), then a 3x3 conv + ReLU to the decoder guidance width.
            self.decoder_guidance_projections = nn.ModuleList(
                nn.Sequential(nn.ConvTranspose2d(c, u, 2 ** (i + 1), stride=2 ** (i + 1)),
                              nn.Conv2d(u, g, 3, padding=1), nn.ReLU())
                for i, (u, g) in enumerate(zip(decoder_guidance_upsample_dims, decoder_guidance_dims)))
        else:
            decoder_guidance_dims = [0] * len(decoder_dims)
        self.spatial = nn.ModuleList(
            SpatialRefinement(embed_dim, guidance_dim if has_guidance else 0, num_heads, window_size)
            for _ in range(num_rounds))
        self.classes = nn.ModuleList(
            ClassRefinement(embed_dim, text_guidance_dim, num_heads, class_attention, class_pooling, pad_len)
            for _ in range(num_rounds))
        self.decoder = UpsamplingDecoder(embed_dim, decoder_dims, decoder_guidance_dims)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        head = cfg.MODEL.DINOV3SEG
        return dict(
            input_shape=input_shape, text_channels=head.TEXT_CHANNELS,
            num_templates=len(load_prompt_templates(head.PROMPT_TEMPLATES)),
            embed_dim=head.COST_EMBED_DIM, guidance_dim=head.GUIDANCE_DIM, text_guidance_dim=head.TEXT_GUIDANCE_DIM,
            num_rounds=head.NUM_REFINEMENT_ROUNDS, window_size=head.WINDOW_SIZE, num_heads=head.NUM_HEADS,
            class_attention=head.CLASS_ATTENTION, class_pooling=head.CLASS_POOLING, pad_len=head.CLASS_PAD_LEN,
            decoder_dims=head.DECODER_DIMS, decoder_guidance_dims=head.DECODER_GUIDANCE_DIMS,
            decoder_guidance_upsample_dims=head.DECODER_GUIDANCE_UPSAMPLE_DIMS,
            class_chunk_size=head.CLASS_CHUNK_SIZE)

    def init_logits_at_class_prior(self, num_classes: int) -> None:
        """Start every logit at the prior of one positive class in ``num_classes``: bias = log(1 / (T - 1))."""
        if num_classes < 2:
            raise ValueError(f"MODEL.DINOV3SEG.INIT_LOGITS_AT_CLASS_PRIOR needs at least 2 training classes, "
                             f"got {num_classes}")
        nn.init.constant_(self.decoder.head.bias, -math.log(num_classes - 1))

    @property
    def chunk(self) -> int:
        """Classes per chunk; 0 = all at once. Chunking is a test-time memory bound (training vocabularies
        are small, and one pass keeps the autograd graph simple)."""
        return 0 if self.training else self.class_chunk_size

    def _per_class_chunks(self, fn, x: torch.Tensor, *args) -> torch.Tensor:
        """Apply a per-class function to (B, T, ...) in chunks of classes (bounds peak memory). Each chunk's
        result is written into one preallocated output, so input + output are the only full-size tensors."""
        if not self.chunk or x.shape[1] <= self.chunk:
            return fn(x, *args)
        out = None
        for start in range(0, x.shape[1], self.chunk):
            y = fn(x[:, start : start + self.chunk], *args)
            if out is None:  # in the memory layout of y: the copies below and the next layer's reads stay plain
                out = empty_in_layout_of(y, x.shape[:2] + y.shape[2:])
            out[:, start : start + self.chunk] = y
        return out

    def text_guidance(self, text: torch.Tensor) -> torch.Tensor:
        """(B, T, P', D) cost-channel embeddings (templates x halves) -> (B, T, G) text guidance.

        Per text half, the templates are averaged and the average is re-normalised (CAT-Seg); the halves are
        then concatenated, not averaged: the CLS-aligned and patch-aligned halves live in different spaces.
        """
        halves = text.unflatten(-2, (-1, len(self.text_channels))).mean(dim=-3)  # B, T, halves, D
        halves = halves / halves.norm(dim=-1, keepdim=True)
        return self.text_projection(halves.flatten(-2))

    def forward(self, patches: torch.Tensor, text: torch.Tensor, guidance: Optional[torch.Tensor] = None,
                decoder_guidance: Optional[List[torch.Tensor]] = None) -> torch.Tensor:
        """
        Args:
            patches: (B, D, H', W') patch features; H' = H * 16 / patch stride.
            text: (T, P, 2D) class embeddings per template (dinov3.txt layout).
            guidance: (B, Cg, H, W) appearance guidance on the patch grid, or None.
            decoder_guidance: list of (B, Cd, H, W) maps, one per decoder stage, or None.
        Returns:
            (B, T, 4H, 4W) logits. With T > pad_len, only the pad_len classes with the highest cost anywhere in
            a view are refined (CAT-Seg); the others get logit PRUNED_LOGIT.
        """
        b, t = patches.shape[0], text.shape[0]
        text = select_text_halves(text, self.text_channels)  # T, P', D
        cost = cosine_cost_volume(patches, text)  # B, P', T, H', W'
        pool = 16 // self.patch_stride
        if pool > 1:
            cost = F.avg_pool3d(cost, (1, pool, pool))
        text = text.expand(b, *text.shape)
        kept = None
        if 0 < self.pad_len < t:
            kept = cost.flatten(3).amax(dim=(1, 3)).topk(self.pad_len, dim=1).indices  # B, pad_len
            cost = torch.gather(cost, 2, kept[:, None, :, None, None].expand(-1, cost.shape[1], -1, *cost.shape[-2:]))
            # As CAT-Seg, the kept embeddings enter the text guidance unit-norm per cost channel.
            text = F.normalize(torch.gather(text, 1, kept[:, :, None, None].expand(-1, -1, *text.shape[-2:])), dim=-1)
        x = self.cost_embedding(cost)  # B, T, C, H, W
        text_guidance = self.text_guidance(text)  # B, T, G
        if self.guidance_projection is not None:
            guidance = self.guidance_projection(guidance)
        if self.decoder_guidance_projections is not None:
            # channels-last like the decoder's class maps, once per image (not once per class chunk)
            decoder_guidance = [p(g).contiguous(memory_format=torch.channels_last)
                                for p, g in zip(self.decoder_guidance_projections, decoder_guidance)]
        else:
            decoder_guidance = [None] * len(self.decoder.stages)
        for spatial, classes in zip(self.spatial, self.classes):
            x = self._per_class_chunks(spatial, x, guidance)
            x = classes(x, text_guidance, self.chunk)
        logits = self._per_class_chunks(self.decoder, x, decoder_guidance)
        if kept is None:
            return logits
        full = logits.new_full((b, t, *logits.shape[-2:]), PRUNED_LOGIT)
        return full.scatter(1, kept[:, :, None, None].expand_as(logits), logits)
