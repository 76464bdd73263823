"""Frozen SAM image encoder (``segment_anything.modeling.ImageEncoderViT``) used as a semantic prior.

The encoder is built for the view size (e.g. 384 -> a 24x24 token grid, aligned with DINOv3 ViT-L/16). The
1024-pixel checkpoint is adapted once at load time: ``pos_embed`` (64x64) is resampled bicubically to the
grid, and the relative-position tables of the global-attention blocks (127 entries) are resampled linearly
to 2 * grid - 1 entries, exactly the interpolation SAM's own ``get_rel_pos`` would apply on every forward.
Windowed blocks keep their 14x14 windows (27-entry tables); SAM pads a 24x24 grid to 28x28 for them, and
``block_forward`` skips the projections of those pad tokens and runs every block's attention as one SDPA call.
"""
import types
from functools import partial
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from einops import rearrange
from segment_anything.modeling import ImageEncoderViT
from segment_anything.modeling import image_encoder as sam_image_encoder
from segment_anything.modeling.image_encoder import Block, window_partition, window_unpartition
from torch import nn

from .weights import WEIGHT_SPECS, load_strict, load_weight_file

__all__ = ["NECK_CHANNELS", "SAM_VARIANTS", "SAMPriorEncoder", "adapt_sam_state_dict"]

PATCH_SIZE = 16
NECK_CHANNELS = 256  # output channels of SAM's neck

# Image-encoder sizes of the released SAM checkpoints (segment_anything/build_sam.py).
SAM_VARIANTS: Dict[str, dict] = {
    "vit_b": dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
    "vit_l": dict(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
}


def adapt_sam_state_dict(state_dict: Dict[str, torch.Tensor], encoder: ImageEncoderViT,
                         prefix: str = "image_encoder.") -> Dict[str, torch.Tensor]:
    """Resample ``pos_embed`` [1,64,64,D] and mismatched ``rel_pos_{h,w}`` [L,d] to ``encoder``'s shapes.

    Other keys pass through unchanged (``load_strict`` reports any remaining mismatch).
    """
    target = encoder.state_dict()
    adapted = dict(state_dict)
    for name, tensor in state_dict.items():
        own = target.get(name[len(prefix):]) if name.startswith(prefix) else None
        if own is None or own.shape == tensor.shape:
            continue
        if name.endswith("pos_embed") and tensor.dim() == 4:
            grid = tuple(own.shape[1:3])
            resized = F.interpolate(tensor.permute(0, 3, 1, 2).float(), size=grid, mode="bicubic",
                                    align_corners=False)
            adapted[name] = resized.permute(0, 2, 3, 1).to(tensor.dtype)
        elif name.endswith(("rel_pos_h", "rel_pos_w")) and tensor.dim() == 2:
            resized = F.interpolate(tensor.t()[None].float(), size=own.shape[0], mode="linear")
            adapted[name] = resized[0].t().to(tensor.dtype)
    return adapted


def relative_position_mask(q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor,
                           size: Tuple[int, int]) -> torch.Tensor:
    """SAM's decomposed relative-position bias as an additive attention mask: q [N, heads, h*w, d] of (h, w)
    token grids (windows, or the whole map) -> [N, heads, h*w, h*w].

    The bias ``add_decomposed_rel_pos`` adds to the logits, written once into a contiguous buffer (the same
    values; adding the two broadcast terms, whose layouts differ from the logits', ran twice as slow on CPU)."""
    n, heads, length, d = q.shape
    h, w = size
    r_q = q.reshape(n * heads, h, w, d)
    # segment-anything's get_rel_pos, looked up on its module (as its own blocks do, so it can be patched there)
    get_rel_pos = sam_image_encoder.get_rel_pos
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, get_rel_pos(h, h, rel_pos_h))
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, get_rel_pos(w, w, rel_pos_w))
    mask = rel_h.new_empty(n * heads, h, w, h, w)
    return torch.add(rel_h[..., None], rel_w[..., None, :], out=mask).view(n, heads, length, length)


def block_forward(block: Block, x: torch.Tensor) -> torch.Tensor:
    """``block.forward`` of a SAM block (windowed or global) with one SDPA call, x: [B, H, W, C] -> [B, H, W, C].

    Attention is ``scaled_dot_product_attention`` with the decomposed relative-position bias as its additive
    mask (:func:`relative_position_mask`), where SAM multiplies, adds the bias and softmaxes explicitly: the
    same function, one fused kernel. Windowed blocks also skip the work SAM spends on window padding: SAM pads
    the normed token grid with zeros to whole windows, so a pad token's q, k and v are the qkv bias, and the pad
    outputs are cropped after the output projection. Here qkv runs on the real tokens and is padded with that
    bias, and the output projection runs on the real tokens (576 of 784 at a 24x24 grid with 14x14 windows).
    Tested against ``Block.forward``.
    """
    attn, window = block.attn, block.window_size
    b, h, w, c = x.shape
    qkv = attn.qkv(block.norm1(x))
    if window > 0:
        hp, wp = h + (-h) % window, w + (-w) % window
        if (hp, wp) != (h, w):
            bias = attn.qkv.bias if attn.qkv.bias is not None else qkv.new_zeros(3 * c)
            padded = bias.to(qkv.dtype).expand(b, hp, wp, -1).clone()
            padded[:, :h, :w] = qkv
            qkv = padded
        qkv, _ = window_partition(qkv, window)  # [B * windows, window, window, 3C], already whole windows
        size = (window, window)
    else:
        size = (h, w)
    q, k, v = rearrange(qkv, "n wh ww (three heads d) -> three n heads (wh ww) d", three=3, heads=attn.num_heads)
    mask = relative_position_mask(q, attn.rel_pos_h, attn.rel_pos_w, size) if attn.use_rel_pos else None
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # scale 1/sqrt(d), as SAM's attn.scale
    out = rearrange(out, "n heads (wh ww) d -> n wh ww (heads d)", wh=size[0])
    if window > 0:
        out = window_unpartition(out, window, (hp, wp), (h, w))
    x = x + attn.proj(out)
    return x + block.mlp(block.norm2(x))


class SAMPriorEncoder(nn.Module):
    """Frozen SAM ViT image encoder returning its neck output and the global-attention block outputs.

    Args:
        variant: "vit_l" or "vit_b" (``SAM_VARIANTS``), or None to give every size argument explicitly.
        image_size: side S of the square input views; the token grid is S / 16 (384 -> 24x24).
        embed_dim, depth, num_heads, global_attn_indexes: override the variant (e.g. a tiny test model).
        window_size: window of the non-global blocks (14 in SAM).
        out_chans: neck channels (256 in SAM).
    """

    def __init__(self, variant: Optional[str] = "vit_l", image_size: int = 384, *,
                 embed_dim: Optional[int] = None, depth: Optional[int] = None, num_heads: Optional[int] = None,
                 global_attn_indexes: Optional[Sequence[int]] = None, window_size: int = 14,
                 out_chans: int = NECK_CHANNELS):
        super().__init__()
        if image_size % PATCH_SIZE:
            raise ValueError(f"SAM image_size must be a multiple of {PATCH_SIZE}, got {image_size}")
        sizes = dict(SAM_VARIANTS[variant]) if variant is not None else {}
        explicit = dict(embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                        global_attn_indexes=global_attn_indexes)
        sizes.update({k: v for k, v in explicit.items() if v is not None})
        if len(sizes) != 4:
            raise ValueError(f"SAM variant None needs all of {sorted(explicit)}; got {sorted(sizes)}")
        self.variant = variant
        self.image_size = image_size
        self.global_attn_indexes = tuple(sizes["global_attn_indexes"])
        self.neck_channels = out_chans
        self.guidance_channels = sizes["embed_dim"]
        self.image_encoder = ImageEncoderViT(
            img_size=image_size, patch_size=PATCH_SIZE, embed_dim=sizes["embed_dim"], depth=sizes["depth"],
            num_heads=sizes["num_heads"], mlp_ratio=4, out_chans=out_chans, qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6), use_rel_pos=True, window_size=window_size,
            global_attn_indexes=self.global_attn_indexes,
        )
        for block in self.image_encoder.blocks:
            block.forward = types.MethodType(block_forward, block)
        self.requires_grad_(False)
        self.eval()
        # SAM's patch embedding returns a permuted view of its convolution's NCHW output; contiguous tokens keep the
        # residual stream in the layout of the blocks' products (mixed-layout adds and norms ran 3x slower on CPU).
        self.image_encoder.patch_embed.register_forward_hook(lambda module, inputs, tokens: tokens.contiguous())
        self._guidance: List[torch.Tensor] = []
        for i in self.global_attn_indexes:
            self.image_encoder.blocks[i].register_forward_hook(self._keep_guidance)

    def _keep_guidance(self, block: nn.Module, inputs, output: torch.Tensor) -> None:
        self._guidance.append(output.permute(0, 3, 1, 2))  # [B,h,w,D] -> [B,D,h,w]

    def load_state_dict_from_sam(self, state_dict: Dict[str, torch.Tensor]) -> List[str]:
        """Load a full SAM checkpoint (``image_encoder.*`` keys); returns the dropped prompt/mask-decoder keys."""
        return load_strict(self, adapt_sam_state_dict(state_dict, self.image_encoder),
                           dropped_prefixes=("prompt_encoder.", "mask_decoder."), component="SAM image encoder")

    def load_weights(self, path: str) -> List[str]:
        """Load ``sam_vit_{l,b}_*.pth`` (or a ``.safetensors`` copy) strictly; an empty path keeps the random
        initialisation. An encoder built on the meta device takes the file's tensors without a copy."""
        if not path:
            return []
        spec = WEIGHT_SPECS.get(f"sam_{self.variant}", WEIGHT_SPECS["sam_vit_l"])
        return self.load_state_dict_from_sam(load_weight_file(path, **spec))

    def forward(self, x: torch.Tensor) -> Dict[str, object]:
        """x [B,3,S,S] ImageNet-normalised -> dict(neck [B,256,S/16,S/16], guidance [B,D,S/16,S/16] per global block)."""
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(f"SAMPriorEncoder was built for {self.image_size}x{self.image_size} views, "
                             f"got {tuple(x.shape[-2:])}")
        self._guidance = []
        try:
            neck = self.image_encoder(x)
            guidance = self._guidance
        finally:
            self._guidance = []
        return {"neck": neck, "guidance": guidance}
