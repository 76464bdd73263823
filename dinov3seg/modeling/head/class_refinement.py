"""Class refinement: attention across classes at every pixel, guided by the class text."""
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .common import GuidedAttentionBlock


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chunk: int) -> torch.Tensor:
    """Kernelised attention (feature map elu + 1), linear in the number of classes.

    q, k, v: (N, heads, T, d). The key/value summary is accumulated over class chunks,
    so the result does not depend on ``chunk``.
    """
    q, k = F.elu(q) + 1, F.elu(k) + 1
    kv = sum(torch.einsum("nhtd,nhte->nhde", kc, vc) for kc, vc in zip(k.split(chunk, 2), v.split(chunk, 2)))
    k_sum = k.sum(dim=2)
    out = [torch.einsum("nhtd,nhde->nhte", qc, kv) / (torch.einsum("nhtd,nhd->nht", qc, k_sum)[..., None] + 1e-6)
           for qc in q.split(chunk, 2)]
    return torch.cat(out, dim=2)


def softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chunk: int) -> torch.Tensor:
    """Full softmax attention over classes, queries processed in chunks. q, k, v: (N, heads, T, d)."""
    return torch.cat([F.scaled_dot_product_attention(qc, k, v) for qc in q.split(chunk, 2)], dim=2)


ATTENTIONS = {"linear": linear_attention, "full": softmax_attention}


class ClassRefinement(GuidedAttentionBlock):
    """Pre-norm transformer layer across the T classes of every pixel.

    No positional encoding over classes: the layer is permutation-equivariant and takes any T.
    Queries and keys see [cost token ; projected text]; values see the cost token only.
    """

    def __init__(self, dim: int, guidance_dim: int, num_heads: int, attention: str = "linear"):
        if attention not in ATTENTIONS:
            raise ValueError(f"MODEL.DINOV3SEG.CLASS_ATTENTION must be one of {sorted(ATTENTIONS)}, got {attention!r}")
        super().__init__(dim, guidance_dim, num_heads)
        self.attention = ATTENTIONS[attention]

    def forward(self, x: torch.Tensor, text: torch.Tensor, chunk: int = 0) -> torch.Tensor:
        """x: (B, T, C, H, W); text: (B, T, G) guidance; chunk: classes per chunk (0 = all)."""
        b, t, _, h, w = x.shape
        chunk = chunk or t
        tokens = rearrange(x, "b t c h w -> (b h w) t c")
        normed = self.norm1(tokens)
        guidance = self.guidance_norm(text)
        split = lambda y: rearrange(y, "n t (heads d) -> n heads t d", heads=self.num_heads)  # noqa: E731
        q, k = self.queries_and_keys(normed, guidance)
        out = self.attention(split(q), split(k), split(self.v(normed)), chunk)
        tokens = tokens + self.proj(rearrange(out, "n heads t d -> n t (heads d)"))
        tokens = torch.cat([c + self.mlp(self.norm2(c)) for c in tokens.split(chunk, dim=1)], dim=1)
        return rearrange(tokens, "(b h w) t c -> b t c h w", b=b, h=h)
