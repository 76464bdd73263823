"""Upsampling decoder: 1/16 refined cost -> 1/4 per-class logits, fused with image guidance."""
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..precision import norm_in_input_dtype


def run_layers(layers: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """``layers(x)``, the GroupNorms in the input's dtype with fp32 statistics (:func:`norm_in_input_dtype`)."""
    for layer in layers:
        x = norm_in_input_dtype(layer, x) if isinstance(layer, nn.GroupNorm) else layer(x)
    return x


def double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    """(3x3 conv, GroupNorm, ReLU) x 2. The ReLUs and the guidance sum (UpsamplingStage) write new maps: on CPU,
    ATen's in-place bf16 ReLU and sum over these 50-100 MB maps ran 2.2x slower than out of place (fp32: about
    even over the decoder), docs/benchmarks.md, fourth round."""
    layers = []
    for c_in in (in_channels, out_channels):
        layers += [nn.Conv2d(c_in, out_channels, 3, padding=1, bias=False),
                   nn.GroupNorm(max(out_channels // 16, 1), out_channels), nn.ReLU()]
    return nn.Sequential(*layers)


class UpsamplingStage(nn.Module):
    """x2 transposed conv, concatenation of guidance, double conv."""

    def __init__(self, in_channels: int, out_channels: int, guidance_channels: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, in_channels - guidance_channels, 2, stride=2)
        self.conv = double_conv(in_channels, out_channels)

    def forward(self, x: torch.Tensor, guidance: Optional[torch.Tensor]) -> torch.Tensor:
        """x: (B*T, C_in, H, W), the T classes of each view consecutive; guidance: (B, G, 2H, 2W), shared by the
        classes of a view, or None. Returns (B*T, C_out, 2H, 2W)."""
        x = self.up(x)
        if guidance is None:
            return run_layers(self.conv, x)
        # conv(cat([x, guidance])) = conv_x(x) + conv_g(guidance) (bias-free conv): the guidance half is
        # computed once per view instead of once per class (the same numbers, no T-fold copy).
        first, c = self.conv[0], x.shape[1]
        conv = lambda y, w: F.conv2d(y, w, None, first.stride, first.padding)  # noqa: E731
        y = conv(x, first.weight[:, :c]).unflatten(0, (guidance.shape[0], -1))
        y = y + conv(guidance, first.weight[:, c:])[:, None]
        return run_layers(self.conv[1:], y.flatten(0, 1))


class UpsamplingDecoder(nn.Module):
    """Per-class decoder. (B, T, C, H, W) + guidance maps at 2H and 4H -> (B, T, 4H, 4W) logits."""

    def __init__(self, in_channels: int, dims: Sequence[int], guidance_dims: Sequence[int]):
        super().__init__()
        channels = [in_channels, *dims]
        self.stages = nn.ModuleList(
            UpsamplingStage(c_in, c_out, g) for c_in, c_out, g in zip(channels[:-1], dims, guidance_dims)
        )
        self.head = nn.Conv2d(dims[-1], 1, 3, padding=1)

    def forward(self, x: torch.Tensor, guidance: List[Optional[torch.Tensor]]) -> torch.Tensor:
        """guidance[i]: (B, G_i, H_i, W_i) or None, shared by all classes."""
        b, t = x.shape[:2]
        # Channels-last: the (transposed) convolutions run 1.4-3x faster on CPU (oneDNN); tensor cores prefer it too.
        # Guidance in the same layout (DINOv3SegHead prepares it once per image) adds to every class's maps 4x faster.
        x = x.flatten(0, 1).contiguous(memory_format=torch.channels_last)
        for stage, g in zip(self.stages, guidance):
            x = stage(x, g)
        return self.head(x).view(b, t, *x.shape[-2:])
