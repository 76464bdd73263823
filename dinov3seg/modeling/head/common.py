"""Layers shared by the spatial and class refinement blocks."""
from typing import Optional, Tuple, Type

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn

from ..fused_linear import linear, mlp_add
from ..precision import norm_in_input_dtype


def guided_linear(layer: nn.Linear, tokens: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
    """``layer(cat([tokens, guidance], -1))`` with guidance shared by groups of tokens.

    tokens: (B * N, ..., C); guidance: (B, ..., G), the same for the N token maps of each of the B
    groups. The guidance half is computed once per group, not N times (same numbers, no N-fold copy).
    """
    b, dim = guidance.shape[0], tokens.shape[-1]
    out = F.linear(tokens, layer.weight[:, :dim]).unflatten(0, (b, -1))
    out += F.linear(guidance, layer.weight[:, dim:], layer.bias)[:, None]
    return out.flatten(0, 1)


class GuidedAttentionBlock(nn.Module):
    """Pre-norm attention block whose queries and keys see [token ; guidance] and values the token only,
    so guidance steers where information flows without being mixed into the cost embedding (CAT-Seg's
    guided attention). The guidance arrives already normalised, or not at all: CAT-Seg normalises the
    image guidance once per spatial layer and feeds the text guidance as projected. The norms run through
    :func:`~..precision.norm_in_input_dtype` (every consumer is a product). Subclasses decide which
    tokens attend to each other; ``out_proj`` and ``act_layer`` follow CAT-Seg's Swin (True, GELU) and class
    (False, ReLU) layers."""

    def __init__(self, dim: int, guidance_dim: int, num_heads: int, act_layer: Type[nn.Module], out_proj: bool):
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim)
        self.q = nn.Linear(dim + guidance_dim, dim)
        self.k = nn.Linear(dim + guidance_dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim) if out_proj else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, 4 * dim, act_layer=act_layer)

    def queries_and_keys(self, tokens: torch.Tensor,
                         guidance: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Normed tokens (B * N, ..., C) and guidance (B, ..., G) or None -> q, k (B * N, ..., C)."""
        if guidance is None:
            return self.q(tokens), self.k(tokens)
        return guided_linear(self.q, tokens, guidance), guided_linear(self.k, tokens, guidance)

    def values(self, tokens: torch.Tensor) -> torch.Tensor:
        """Normed tokens (..., C) -> v (..., C)."""
        return linear(tokens, self.v.weight, self.v.bias)

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The MLP sub-block with its residual: x + mlp(norm2(x)), x: (..., C)."""
        return mlp_add(self.mlp, norm_in_input_dtype(self.norm2, x), x)
