"""Cost volume between patch features and class text embeddings, and its per-class embedding."""
from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

TEXT_HALVES = ("global", "local")  # dinov3.txt text layout: [CLS-aligned ; patch-aligned]


def check_text_halves(halves: Sequence[str]) -> List[str]:
    """Validate MODEL.DINOV3SEG.TEXT_CHANNELS: a non-empty list of distinct names among TEXT_HALVES."""
    if not halves or set(halves) - set(TEXT_HALVES) or len(set(halves)) != len(halves):
        raise ValueError(f"MODEL.DINOV3SEG.TEXT_CHANNELS must name 'local' and/or 'global' once each, "
                         f"got {list(halves)}")
    return list(halves)


def select_text_halves(text: torch.Tensor, halves: Sequence[str]) -> torch.Tensor:
    """Split dinov3.txt text embeddings into the halves that feed the cost volume.

    Args:
        text: (..., T, P, 2D) embeddings; the first D channels are CLS-aligned ("global"),
            the last D are patch-aligned ("local").
        halves: names among ("local", "global").
    Returns:
        (..., T, P * len(halves), D), channel order = templates x halves.
    """
    global_half, local_half = text.chunk(2, dim=-1)
    parts = {"global": global_half, "local": local_half}
    return torch.stack([parts[h] for h in halves], dim=-2).flatten(-3, -2)


def cosine_cost_volume(features: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every patch with every class embedding.

    Args:
        features: (B, D, H, W) patch features.
        text: (T, P, D) or (B, T, P, D) class embeddings, P cost channels per class.
    Returns:
        (B, P, T, H, W) cost volume.
    """
    # The L2 normalisation runs in fp32 under bf16 autocast too (by design); the contraction may run in bf16.
    features = F.normalize(features.float(), dim=1)
    text = F.normalize(text.float(), dim=-1)
    if text.dim() == 3:
        return torch.einsum("bdhw,tpd->bpthw", features, text)
    return torch.einsum("bdhw,btpd->bpthw", features, text)


class CostEmbedding(nn.Module):
    """Per-class 7x7 convolution of the P cost channels: (B, P, T, H, W) -> (B, T, C, H, W)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)

    def forward(self, cost: torch.Tensor) -> torch.Tensor:
        b, p, t, h, w = cost.shape
        x = self.conv(cost.transpose(1, 2).reshape(b * t, p, h, w).contiguous(memory_format=torch.channels_last))
        # Stored as B, T, H, W, C: the refinement's (B*T, H, W, C) tokens are then a view, and its residual adds
        # read one layout (on CPU, adding maps of different layouts ran 4x slower).
        return x.view(b, t, -1, h, w)
