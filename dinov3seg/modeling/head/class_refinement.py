"""Class refinement: attention across classes at every (pooled) pixel, guided by the class text.

CAT-Seg's ``ClassTransformerLayer``: average-pool the cost embedding, pad the class axis to ``pad_len`` with a
learned token (and a learned guidance vector), run one pre-norm attention + ReLU MLP layer across classes,
upsample the result and add it to the input.
"""
import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..precision import norm_in_input_dtype
from .common import GuidedAttentionBlock

# Keys and values of the padding slots: (k, v) of one padding token, each (heads, d), and how many slots.
Padding = Optional[Tuple[torch.Tensor, torch.Tensor, int]]


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, padding: Padding = None) -> torch.Tensor:
    """Kernelised attention (feature map elu + 1), linear in the number of classes. q, k, v: (N, heads, T, d)."""
    q, k = F.elu(q) + 1, F.elu(k) + 1
    kv = torch.einsum("nhtd,nhte->nhde", k, v)
    k_sum = k.sum(dim=2)
    if padding is not None:
        k_pad, v_pad, count = padding
        k_pad = F.elu(k_pad) + 1
        kv = kv + count * torch.einsum("hd,he->hde", k_pad, v_pad)
        k_sum = k_sum + count * k_pad
    normaliser = torch.einsum("nhtd,nhd->nht", q, k_sum)[..., None] + 1e-6
    return torch.einsum("nhtd,nhde->nhte", q, kv) / normaliser


def full_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, padding: Padding = None) -> torch.Tensor:
    """Softmax attention across classes. q, k, v: (N, heads, T, d). The padding slots share one key, so they
    enter as that key once with its weight multiplied by their count (log count added to its logit)."""
    if padding is None:
        return F.scaled_dot_product_attention(q, k, v)
    k_pad, v_pad, count = padding
    n, heads, t, d = k.shape
    k = torch.cat([k, k_pad[None, :, None].expand(n, heads, 1, d)], dim=2)
    v = torch.cat([v, v_pad[None, :, None].expand(n, heads, 1, d)], dim=2)
    bias = q.new_zeros(t + 1)
    bias[-1] = math.log(count)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias[None])


ATTENTIONS = {"linear": linear_attention, "full": full_attention}


class ClassRefinement(GuidedAttentionBlock):
    """Pre-norm transformer layer across the T classes of every pooled pixel (CAT-Seg's class aggregation).

    No positional encoding over classes: the layer is permutation-equivariant and takes any T. Queries and keys
    see [cost token ; projected text]; values see the cost token only. With ``pad_len`` > T the class axis is
    padded to ``pad_len`` with one learned token (and learned text guidance), both initialised to zero as in
    CAT-Seg. The padding slots are identical, so they are not materialised: they enter attention as one shared
    key and value counted ``pad_len - T`` times (the same numbers), and their own outputs, which CAT-Seg drops,
    are not computed. Padding therefore costs no memory or time proportional to ``pad_len``.
    """

    def __init__(self, dim: int, guidance_dim: int, num_heads: int, attention: str = "linear",
                 pooling: Sequence[int] = (2, 2), pad_len: int = 256):
        if attention not in ATTENTIONS:
            raise ValueError(f"MODEL.DINOV3SEG.CLASS_ATTENTION must be one of {sorted(ATTENTIONS)}, got {attention!r}")
        if len(pooling) != 2 or min(pooling) < 1:
            raise ValueError(f"MODEL.DINOV3SEG.CLASS_POOLING must be two positive sizes, got {list(pooling)}")
        super().__init__(dim, guidance_dim, num_heads, act_layer=nn.ReLU, out_proj=False)
        self.attention = ATTENTIONS[attention]
        self.pooling = tuple(pooling)
        self.pad_len = pad_len
        self.padding_token = nn.Parameter(torch.zeros(dim)) if pad_len > 0 else None
        self.padding_guidance = nn.Parameter(torch.zeros(guidance_dim)) if pad_len > 0 and guidance_dim else None

    def forward(self, x: torch.Tensor, text: torch.Tensor, chunk: int = 0) -> torch.Tensor:
        """x: (B, T, C, H, W); text: (B, T, G) guidance. Returns (B, T, C, H, W).

        With ``chunk`` > 0 and T > chunk, pixels are refined in groups holding as many tokens as ``chunk``
        classes of a whole view, and the upsampling runs ``chunk`` classes at a time, so the working memory
        stays that of ``chunk`` classes (pixels are independent here: the result is the same)."""
        b, t, c, h, w = x.shape
        pooled = x
        if self.pooling != (1, 1):
            pooled = F.avg_pool2d(x.flatten(0, 1), self.pooling).unflatten(0, (b, t))
        hp, wp = pooled.shape[-2:]
        padding = self._padding(t)
        if not chunk or t <= chunk:
            tokens = rearrange(pooled, "b t c h w -> b (h w) t c")
            refined = rearrange(self._refine(tokens, text, padding), "b (h w) t c -> b t c h w", h=hp)
            if pooled is x:
                return x + refined
            return x + self._upsample(refined, (h, w))
        # Chunked (test time): one pixel group at a time goes to the token layout; each group's result is
        # written back in place (into a copy when there is no pooling, so the input is left intact).
        refined = pooled if pooled is not x else torch.empty_like(x)
        flat_in, flat_out = pooled.flatten(3), refined.flatten(3)
        step = max(1, hp * wp * chunk // t)
        for i in range(b):
            for s in range(0, hp * wp, step):
                group = rearrange(flat_in[i : i + 1, ..., s : s + step], "b t c n -> b n t c")
                out = self._refine(group, text[i : i + 1], padding)
                flat_out[i : i + 1, ..., s : s + step] = rearrange(out, "b n t c -> b t c n")
        if pooled is x:
            return refined.add_(x)
        out = torch.empty_like(x)
        for s in range(0, t, chunk):
            out[:, s : s + chunk] = x[:, s : s + chunk] + self._upsample(refined[:, s : s + chunk], (h, w))
        return out

    @staticmethod
    def _upsample(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        """(B, T, C, h, w) -> (B, T, C, H, W), bilinear with aligned corners as CAT-Seg; channels-last (stored
        B, T, H, W, C), the layout of the refinement's maps, which it is added to."""
        flat = x.flatten(0, 1).contiguous(memory_format=torch.channels_last)
        up = F.interpolate(flat, size=size, mode="bilinear", align_corners=True)
        return up.unflatten(0, x.shape[:2])

    def _padding(self, t: int) -> Padding:
        """Key and value of the padding token, split into heads, and the number of padding slots (T < pad_len)."""
        if self.padding_token is None or t >= self.pad_len:
            return None
        # Functional calls: a module called on a bare parameter trips FlopCounterMode's module hooks under
        # inference_mode (tools/benchmark).
        norm = self.norm1
        token = F.layer_norm(self.padding_token, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
        with_guidance = token if self.padding_guidance is None else torch.cat([token, self.padding_guidance])
        split = lambda y: y.view(self.num_heads, -1)  # noqa: E731
        k, v = F.linear(with_guidance, self.k.weight, self.k.bias), F.linear(token, self.v.weight, self.v.bias)
        return split(k), split(v), self.pad_len - t

    def _refine(self, tokens: torch.Tensor, guidance: torch.Tensor, padding: Padding) -> torch.Tensor:
        """tokens: (B, N, T, C), N pixels of each of B views; guidance: (B, T, G). Returns (B, N, T, C)."""
        x = tokens.flatten(0, 1)
        normed = norm_in_input_dtype(self.norm1, x)
        split = lambda y: rearrange(y, "n t (heads d) -> n heads t d", heads=self.num_heads)  # noqa: E731
        q, k = self.queries_and_keys(normed, guidance)
        out = self.attention(split(q), split(k), split(self.values(normed)), padding)
        x = x + rearrange(out, "n heads t d -> n t (heads d)")
        return self.feed_forward(x).view_as(tokens)
