"""Class refinement: attention across classes at every pixel, guided by the class text."""
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .common import GuidedAttentionBlock


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Kernelised attention (feature map elu + 1), linear in the number of classes. q, k, v: (N, heads, T, d)."""
    q, k = F.elu(q) + 1, F.elu(k) + 1
    kv = torch.einsum("nhtd,nhte->nhde", k, v)
    normaliser = torch.einsum("nhtd,nhd->nht", q, k.sum(dim=2))[..., None] + 1e-6
    return torch.einsum("nhtd,nhde->nhte", q, kv) / normaliser


ATTENTIONS = {"linear": linear_attention, "full": F.scaled_dot_product_attention}


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
        """x: (B, T, C, H, W); text: (B, T, G) guidance. With ``chunk`` > 0 and T > chunk, pixels are refined
        in groups holding as many tokens as ``chunk`` classes of a whole view, so the working memory stays that
        of ``chunk`` classes (pixels are independent here: the result is the same)."""
        b, t, c, h, w = x.shape
        guidance = self.guidance_norm(text)
        to_tokens = lambda y: rearrange(y, "b t c n -> b n t c")  # noqa: E731
        if not chunk or t <= chunk:
            out = self._refine(to_tokens(x.flatten(3)), guidance)
        else:  # one pixel group at a time goes to the token layout
            out = x.new_empty(b, h * w, t, c)
            step = max(1, h * w * chunk // t)
            for i in range(b):
                for s in range(0, h * w, step):
                    group = to_tokens(x[i : i + 1].flatten(3)[..., s : s + step])
                    out[i : i + 1, s : s + step] = self._refine(group, guidance[i : i + 1])
        return rearrange(out, "b (h w) t c -> b t c h w", h=h)

    def _refine(self, tokens: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        """tokens: (B, N, T, C), N pixels of each of B views; guidance: (B, T, G) normed. Returns (B, N, T, C)."""
        x = tokens.flatten(0, 1)
        normed = self.norm1(x)
        split = lambda y: rearrange(y, "n t (heads d) -> n heads t d", heads=self.num_heads)  # noqa: E731
        q, k = self.queries_and_keys(normed, guidance)
        out = self.attention(split(q), split(k), split(self.v(normed)))
        x = x + self.proj(rearrange(out, "n heads t d -> n t (heads d)"))
        x = x + self.mlp(self.norm2(x))
        return x.view_as(tokens)
