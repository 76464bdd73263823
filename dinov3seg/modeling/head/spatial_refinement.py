"""Spatial refinement: Swin blocks over each class's cost map, guided by image features."""
from typing import Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..fused_linear import linear
from ..precision import norm_in_input_dtype
from .common import GuidedAttentionBlock


def shifted_window_mask(height: int, width: int, window: int, shift: int, device) -> torch.Tensor:
    """Boolean (num_windows, window**2, window**2) mask, True where a query may attend a key.

    Tokens that a cyclic shift brings next to each other from opposite borders do not attend.
    """
    region = torch.zeros(height, width, dtype=torch.long, device=device)
    cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for i, rows in enumerate(cuts):
        for j, cols in enumerate(cuts):
            region[rows, cols] = 3 * i + j
    region = rearrange(region, "(nh wh) (nw ww) -> (nh nw) (wh ww)", wh=window, ww=window)
    return region[:, :, None] == region[:, None, :]


class GuidedSwinBlock(GuidedAttentionBlock):
    """One (shifted-)window attention block over each class's cost map, guided by image features."""

    def __init__(self, dim: int, guidance_dim: int, num_heads: int, window: int, shift: int):
        super().__init__(dim, guidance_dim, num_heads, act_layer=nn.GELU, out_proj=True)
        self.window, self.shift = window, shift

    def forward(self, x: torch.Tensor, guidance: Optional[torch.Tensor]) -> torch.Tensor:
        """x: (N, H, W, C) cost tokens, N = B * T (classes of one view consecutive); guidance: (B, H, W, G),
        normed, shared by the T classes of each view, or None. Returns (N, H, W, C)."""
        h, w = x.shape[1:3]
        # As Swin (and CAT-Seg): a map no larger than the window is one unshifted window.
        window = min(self.window, h, w)
        shift = self.shift if min(h, w) > self.window else 0
        # Pad to whole windows, then shift cyclically.
        pad_h, pad_w = (-h) % window, (-w) % window
        hp, wp = h + pad_h, w + pad_w

        def to_grid(y: torch.Tensor) -> torch.Tensor:
            y = F.pad(y, (0, 0, 0, pad_w, 0, pad_h))
            return y.roll((-shift, -shift), dims=(1, 2)) if shift else y

        tokens = to_grid(norm_in_input_dtype(self.norm1, x))
        if guidance is not None:
            guidance = to_grid(guidance)
        q, k = self.queries_and_keys(tokens, guidance)
        # The windows of a map join its heads in attention's head axis, so the shift mask, which depends on the
        # window only, broadcasts over the maps: (1, windows * heads, L, L), not one copy per map.
        to_windows = "n (nh wh) (nw ww) (heads d) -> n (nh nw heads) (wh ww) d"
        sizes = dict(wh=window, ww=window, heads=self.num_heads)
        q, k, v = (rearrange(y, to_windows, **sizes) for y in (q, k, self.values(tokens)))
        mask = None
        if shift:
            mask = shifted_window_mask(hp, wp, window, shift, x.device)
            mask = mask.repeat_interleave(self.num_heads, dim=0)[None]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = rearrange(out, "n (nh nw heads) (wh ww) d -> n (nh wh) (nw ww) (heads d)",
                        nh=hp // window, wh=window, ww=window, heads=self.num_heads)
        if shift:
            out = out.roll((shift, shift), dims=(1, 2))
        x = linear(out[:, :h, :w], self.proj.weight, self.proj.bias, residual=x)
        return self.feed_forward(x)


class SpatialRefinement(nn.Module):
    """Two Swin blocks (plain windows, then windows shifted by half) over each class's cost map; one
    guidance LayerNorm shared by both blocks (CAT-Seg's ``SwinTransformerBlockWrapper``)."""

    def __init__(self, dim: int, guidance_dim: int, num_heads: int, window: int):
        super().__init__()
        self.guidance_norm = nn.LayerNorm(guidance_dim) if guidance_dim > 0 else None
        self.blocks = nn.ModuleList(
            GuidedSwinBlock(dim, guidance_dim, num_heads, window, shift) for shift in (0, window // 2)
        )

    def forward(self, x: torch.Tensor, guidance: Optional[torch.Tensor]) -> torch.Tensor:
        """x: (B, T, C, H, W); guidance: (B, G, H, W) or None, shared by all classes."""
        b = x.shape[0]
        x = rearrange(x, "b t c h w -> (b t) h w c")
        if guidance is not None:
            guidance = norm_in_input_dtype(self.guidance_norm, guidance.permute(0, 2, 3, 1))  # B, H, W, G (shared by the classes)
        for block in self.blocks:
            x = block(x, guidance)
        return rearrange(x, "(b t) h w c -> b t c h w", b=b)
