"""Layers shared by the spatial and class refinement blocks."""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn


def mlp(dim: int, ratio: float = 4.0) -> nn.Sequential:
    hidden = int(dim * ratio)
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


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
    so guidance steers where information flows without being mixed into the cost embedding.
    Subclasses decide which tokens attend to each other."""

    def __init__(self, dim: int, guidance_dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim)
        self.guidance_norm = nn.LayerNorm(guidance_dim) if guidance_dim > 0 else None
        self.q = nn.Linear(dim + guidance_dim, dim)
        self.k = nn.Linear(dim + guidance_dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = mlp(dim)

    def queries_and_keys(self, tokens: torch.Tensor,
                         guidance: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Normed tokens (B * N, ..., C) and normed guidance (B, ..., G) or None -> q, k (B * N, ..., C)."""
        if guidance is None:
            return self.q(tokens), self.k(tokens)
        return guided_linear(self.q, tokens, guidance), guided_linear(self.k, tokens, guidance)
