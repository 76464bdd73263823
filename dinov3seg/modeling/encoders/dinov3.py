"""DINOv3 ViT backbone for inference, with the state-dict key names of Meta's ``DinoVisionTransformer``.

Token layout: ``[CLS, S storage tokens, h*w patch tokens (row-major)]``. RoPE rotates the queries and keys of
the patch tokens only; its ``periods`` buffer comes from the checkpoint. Eval-mode semantics only (no RoPE
coordinate augmentation, no masking, no drop path).
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MaskedBiasLinear(nn.Linear):
    """Linear layer whose bias is multiplied by the ``bias_mask`` buffer (Meta's ``LinearKMaskedBias``).

    A fresh layer masks the K third (mask 1/0/1), as Meta's ``init_weights_vit`` does; the released distilled
    checkpoints store a zero bias and a zero mask.
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features, bias=True)
        mask = torch.ones(out_features)
        mask[out_features // 3 : 2 * out_features // 3] = 0
        self.register_buffer("bias_mask", mask)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias * self.bias_mask.to(self.bias.dtype))


def rope_apply(x: Tensor, sin: Tensor, cos: Tensor) -> Tensor:
    """Rotate the last ``sin.shape[0]`` tokens of x [B, heads, N, Dh] by sin/cos [n, Dh] (rotate-half pairs)."""
    prefix = x.shape[-2] - sin.shape[-2]
    tail = x[..., prefix:, :].to(sin.dtype, memory_format=torch.contiguous_format)  # the layout of sin / cos
    x1, x2 = tail.chunk(2, dim=-1)
    rotated = tail * cos + torch.cat([-x2, x1], dim=-1) * sin
    return torch.cat([x[..., :prefix, :], rotated.to(x.dtype)], dim=-2)


class Attention(nn.Module):
    """Multi-head self-attention on x [B, N, C] -> [B, N, C] (keys ``qkv``, ``proj``).

    ``masked_qkv_bias``: qkv has a bias gated by ``bias_mask`` (DINOv3 backbone); otherwise qkv has no bias.
    ``is_causal``: causal mask (text tower). ``rope`` (sin, cos) [n, C/heads] rotates the last n tokens.
    """

    def __init__(self, dim: int, num_heads: int, masked_qkv_bias: bool = False, is_causal: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.is_causal = is_causal
        self.qkv = MaskedBiasLinear(dim, 3 * dim) if masked_qkv_bias else nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, rope: Optional[Tuple[Tensor, Tensor]] = None) -> Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        if rope is not None:
            q, k = rope_apply(q, *rope), rope_apply(k, *rope)
        x = F.scaled_dot_product_attention(q, k, v, is_causal=self.is_causal)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):
    """fc1 -> exact GELU -> fc2, on [..., dim]."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class LayerScale(nn.Module):
    """Per-channel scale ``gamma`` [dim]."""

    def __init__(self, dim: int, init_value: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init_value))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm transformer block with LayerScale: x [B, N, dim] -> [B, N, dim] (Meta's ``SelfAttentionBlock``)."""

    def __init__(self, dim: int, num_heads: int, mlp: nn.Module, masked_qkv_bias: bool, norm_eps: float = 1e-5):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, masked_qkv_bias=masked_qkv_bias)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = mlp
        self.ls2 = LayerScale(dim)

    def forward(self, x: Tensor, rope: Optional[Tuple[Tensor, Tensor]] = None) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), rope=rope))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Conv patchify: images [B, 3, H, W] -> tokens [B, H/p, W/p, D]."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


def rope_periods(head_dim: int, base: float = 100.0, rounding: Optional[torch.dtype] = torch.bfloat16) -> Tensor:
    """``base ** (2i / (head_dim/2))``, i < head_dim/4, as fp32 [head_dim/4]; ``rounding`` bf16 gives the values
    Meta's ViT-L checkpoints store (trained with ``pos_embed_rope_dtype: bf16``), None the unrounded fp32 ones
    that transformers' ``DINOv3ViTModel`` uses."""
    exponents = 2 * torch.arange(head_dim // 4, dtype=torch.float32, device="cpu") / (head_dim // 2)
    periods = base**exponents
    return periods.to(rounding).float() if rounding is not None else periods


class RopeEmbedding(nn.Module):
    """Axial 2-D RoPE (``normalize_coords="separate"``, eval mode); ``periods`` [head_dim/4] is a checkpoint buffer.

    A fresh buffer holds ``rope_periods(head_dim, base)``, the bf16-rounded values the released files store.
    """

    def __init__(self, head_dim: int, base: float = 100.0):
        super().__init__()
        self.register_buffer("periods", rope_periods(head_dim, base).to(torch.empty(0).device))

    def forward(self, *, H: int, W: int) -> Tuple[Tensor, Tensor]:
        """Returns (sin, cos), each [H*W, head_dim] in fp32, for a row-major H x W patch grid."""
        dd = dict(device=self.periods.device, dtype=torch.float32)  # fp32 under autocast too, by design
        coords_h = torch.arange(0.5, H, **dd) / H
        coords_w = torch.arange(0.5, W, **dd) / W
        coords = torch.stack(torch.meshgrid(coords_h, coords_w, indexing="ij"), dim=-1).flatten(0, 1)
        coords = 2.0 * coords - 1.0  # [HW, 2] in [-1, 1]
        angles = 2 * math.pi * coords[:, :, None] / self.periods.float()[None, None, :]  # [HW, 2, Dh/4]
        angles = angles.flatten(1, 2).tile(2)  # [HW, Dh]: y-freqs, x-freqs, repeated
        return torch.sin(angles), torch.cos(angles)


class DINOv3ViT(nn.Module):
    """DINOv3 vision transformer (defaults: ViT-L/16 LVD-1689M) with Meta's state-dict keys.

    Input images [B, 3, H, W], ImageNet-normalised, H and W multiples of ``patch_size``.
    """

    def __init__(
        self,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        patch_size: int = 16,
        n_storage_tokens: int = 4,
        ffn_ratio: float = 4.0,
        rope_base: float = 100.0,
        norm_eps: float = 1e-5,
        in_chans: int = 3,
    ):
        super().__init__()
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.patch_size = patch_size
        self.n_storage_tokens = n_storage_tokens
        self.cls_token = nn.Parameter(torch.randn(1, 1, embed_dim) * 0.02)
        self.storage_tokens = nn.Parameter(torch.randn(1, n_storage_tokens, embed_dim) * 0.02)
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))  # iBOT training only; kept for strict loading
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.rope_embed = RopeEmbedding(embed_dim // num_heads, rope_base)
        hidden = int(embed_dim * ffn_ratio)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, Mlp(embed_dim, hidden), masked_qkv_bias=True, norm_eps=norm_eps)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)

    def _blocks_output(self, x: Tensor, take: Sequence[int]) -> List[Tensor]:
        """Un-normed tokens [B, 1+S+h*w, D] after each block index in ``take`` (0-based, ascending)."""
        H, W = x.shape[-2:]
        p = self.patch_size
        if H % p or W % p:
            raise ValueError(f"DINOv3ViT: input size {H}x{W} must be a multiple of the patch size {p}")
        patches = self.patch_embed(x)  # [B, h, w, D]
        B, h, w, _ = patches.shape
        x = torch.cat(
            [self.cls_token.expand(B, -1, -1), self.storage_tokens.expand(B, -1, -1), patches.flatten(1, 2)], dim=1
        )
        rope = self.rope_embed(H=h, W=w)
        outputs = []
        for i, block in enumerate(self.blocks):
            x = block(x, rope=rope)
            if i in take:
                outputs.append(x)
        if len(outputs) != len(take):
            raise ValueError(f"DINOv3ViT: block indices {list(take)} not all in 0..{len(self.blocks) - 1}")
        return outputs

    def forward_features(self, x: Tensor) -> Dict[str, Tensor]:
        """x [B, 3, H, W] -> dict of final-norm tokens: ``x_norm_clstoken`` [B, D], ``x_storage_tokens``
        [B, S, D], ``x_norm_patchtokens`` [B, h*w, D]."""
        x = self.norm(self._blocks_output(x, [len(self.blocks) - 1])[0])
        s = self.n_storage_tokens
        return {"x_norm_clstoken": x[:, 0], "x_storage_tokens": x[:, 1 : s + 1], "x_norm_patchtokens": x[:, s + 1 :]}

    def forward(self, x: Tensor) -> Tensor:
        """x [B, 3, H, W] -> normed CLS token [B, D]."""
        return self.forward_features(x)["x_norm_clstoken"]

    def get_intermediate_layers(
        self,
        x: Tensor,
        n: Union[int, Sequence[int]] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        return_extra_tokens: bool = False,
        norm: bool = True,
    ) -> Tuple:
        """Tokens after selected blocks (Meta's semantics).

        n: an int takes the last n blocks; a sequence gives 0-based block indices. ``norm`` applies the final
        norm to each output. Per block: patches [B, h*w, D] (or [B, D, h, w] with ``reshape``), then the class
        token [B, D] if ``return_class_token``, then the storage tokens [B, S, D] if ``return_extra_tokens``; a
        bare patch tensor per block when neither is asked for.
        """
        depth = len(self.blocks)
        take = list(range(depth - n, depth)) if isinstance(n, int) else list(n)
        outputs = self._blocks_output(x, take)
        if norm:
            outputs = [self.norm(out) for out in outputs]
        s = self.n_storage_tokens
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        results = []
        for out in outputs:
            patches = out[:, s + 1 :]
            if reshape:
                patches = patches.reshape(out.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous()
            extras = ([out[:, 0]] if return_class_token else []) + ([out[:, 1 : s + 1]] if return_extra_tokens else [])
            results.append((patches, *extras) if extras else patches)
        return tuple(results)


def dinov3_vitl16(weights: Optional[str] = None) -> DINOv3ViT:
    """DINOv3 ViT-L/16 (1024 dim, 24 blocks, 16 heads, 4 storage tokens); optionally loads its weights strictly
    (Meta's ``dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth``, a ``.safetensors`` or a Hugging Face folder)."""
    if weights is None:
        return DINOv3ViT()
    from .dinov3_weights import load_dinov3_weights

    with torch.device("meta"):
        model = DINOv3ViT()
    load_dinov3_weights(model, weights)
    return model
