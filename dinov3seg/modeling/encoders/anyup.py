"""AnyUp (Wimmer et al., "AnyUp: Universal Feature Upsampling", arXiv 2510.12764), re-implemented.

Computes the same function as the official ``anyup.model.AnyUp`` at its default configuration (standard
windowed cross-attention, no NATTEN) and loads ``anyup_paper.pth`` / ``anyup_multi_backbone.pth`` strictly.
Every output vector is a convex combination of input feature vectors from a local window, so the output
stays in the input feature space and any channel count C works.
"""
import math
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .weights import WEIGHT_SPECS, load_strict, load_weight_file

__all__ = ["AnyUp"]

Size = Union[int, Tuple[int, int]]


class PointwiseConv(nn.Conv2d):
    """Bias-free 1x1 convolution computed as one matmul over the NCHW layout: [B,C,H,W] -> [B,O,H,W].

    The same function and parameters as ``nn.Conv2d(C, O, 1, bias=False)``; on CPU the matmul is 1.5x faster
    than the NCHW convolution at AnyUp's full-resolution 128-channel maps.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.flatten(1).expand(x.shape[0], -1, -1)  # a batched matmul: no layout copies
        return torch.bmm(weight, x.flatten(2)).unflatten(2, x.shape[-2:])


class ResBlock(nn.Module):
    """Pre-activation residual block (GroupNorm(8) -> SiLU -> 1x1 conv) x 2; [B,C,H,W] -> [B,C,H,W]."""

    def __init__(self, channels: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.GroupNorm(8, channels), nn.SiLU(), PointwiseConv(channels, channels),
            nn.GroupNorm(8, channels), nn.SiLU(), PointwiseConv(channels, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class LearnedFeatureUnification(nn.Module):
    """Channel-count-agnostic first layer: [B,C,h,w] features -> [B,M,h,w] local-structure map.

    Every input channel is convolved (zero padding, normalised by the number of valid taps) with the same bank
    of M ``basis`` filters. The B x (C*M) responses, laid out channel-major, are then read as an M x C grid, a
    softmax runs over the M axis and the result is averaged over the C axis. This grouping reproduces the
    released checkpoints' computation exactly (it coincides with "softmax over filters per channel" only
    when C == M).

    Images are processed one at a time: the C x M response volume (1024 x 128 x 24 x 24 fp32 = 302 MB per
    ViT-L view) is the largest activation of the whole model, and the result does not depend on batching.
    """

    def __init__(self, num_filters: int, kernel_size: int):
        super().__init__()
        self.basis = nn.Parameter(torch.randn(num_filters, 1, kernel_size, kernel_size))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        _, c, h, w = features.shape
        m, _, k, _ = self.basis.shape
        ones = features.new_ones(1, 1, h, w)
        valid_taps = F.conv2d(ones, torch.ones_like(self.basis[:1]), padding=k // 2).flatten(2)  # [1, 1, h*w]
        maps = []
        for image in features:
            # Filter bank as a matmul over unfolded taps (the single-input-channel convolution is slow on CPU).
            taps = F.unfold(image[:, None], k, padding=k // 2)  # [C, k*k, h*w]
            responses = torch.bmm(self.basis.flatten(1).expand(c, -1, -1), taps).div_(valid_taps)  # [C, M, h*w]
            maps.append(responses.view(m, c, h, w).softmax(dim=0).mean(dim=1))
        return torch.stack(maps)


def _encoder(first: nn.Module, dim: int) -> nn.Sequential:
    """``first`` layer followed by two ResBlocks (checkpoint layout ``<name>.{0,1,2}``)."""
    return nn.Sequential(first, ResBlock(dim), ResBlock(dim))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=1)
    return torch.cat((-x2, x1), dim=1)


class RoPE(nn.Module):
    """2-D rotary encoding of [B,D,H,W] maps with learned frequencies ``freqs`` [2, D] (row, column axes).

    Coordinates are ``linspace(0, 1, n)`` per axis (endpoints included); the angle of channel d at (i, j) is
    ``y_i * freqs[0, d] + x_j * freqs[1, d]``, a full 2 x D product (load ``freqs`` from the checkpoint).
    """

    def __init__(self, dim: int, theta: float = 100.0):
        super().__init__()
        freqs_1d = theta ** torch.linspace(0, -1, dim // 4)
        freqs_1d = torch.cat([freqs_1d, freqs_1d])
        freqs = torch.zeros(2, dim)
        freqs[0, : dim // 2] = freqs_1d
        freqs[1, dim // 2 :] = freqs_1d
        self.freqs = nn.Parameter(freqs * 2 * math.pi)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, d, h, w = x.shape
        ys = torch.linspace(0, 1, h, device=x.device, dtype=x.dtype)
        xs = torch.linspace(0, 1, w, device=x.device, dtype=x.dtype)
        coords = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(h * w, 2)
        angle = (coords @ self.freqs).t().reshape(1, d, h, w)
        return x * angle.cos() + _rotate_half(x) * angle.sin()


def window_bounds(out_len: int, in_len: int, ratio: float, device=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Key window [start, end) on an ``in_len`` axis for each of ``out_len`` query positions.

    A query at normalised centre p sees low-res cells covering [p - ratio, p + ratio] (clamped to [0, 1]),
    quantised outwards (floor / ceil) on the low-res grid. Returns two int64 [out_len] tensors.
    """
    pos = (torch.arange(out_len, device=device, dtype=torch.float32) + 0.5) / out_len
    start = ((pos - ratio).clamp(0.0, 1.0) * in_len).floor().long()
    end = ((pos + ratio).clamp(0.0, 1.0) * in_len).ceil().long()
    return start, end


class WindowCrossAttention(nn.Module):
    """Windowed attention of high-res queries over low-res keys, applied to the raw values.

    q [B,Q,D] and k [B,K,D] are RMS-normalised (eps = dtype eps) and projected by the q/k rows of a
    ``nn.MultiheadAttention`` in-projection; the head-averaged softmax weights [B,Q,K] multiply the
    unprojected values [B,K,C]. The V rows and ``out_proj`` of ``attention`` are never used; they are kept
    so that the released checkpoints load strictly.
    """

    def __init__(self, qk_dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm_q = nn.RMSNorm(qk_dim)
        self.norm_k = nn.RMSNorm(qk_dim)
        self.attention = nn.MultiheadAttention(qk_dim, num_heads, batch_first=True)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """q [B,Q,D], k [B,K,D], v [B,K,C], masked [Q,K] bool (True = excluded) -> [B,Q,C]."""
        b, _, d = q.shape
        w_q, w_k, _ = self.attention.in_proj_weight.chunk(3)
        b_q, b_k, _ = self.attention.in_proj_bias.chunk(3)
        heads = lambda t: t.reshape(b, t.shape[1], self.num_heads, -1).transpose(1, 2)  # noqa: E731
        q = heads(F.linear(self.norm_q(q), w_q, b_q)) * math.sqrt(self.num_heads / d)
        k = heads(F.linear(self.norm_k(k), w_k, b_k))
        logits = (q @ k.transpose(-2, -1)).masked_fill(masked, float("-inf"))  # [B, heads, Q, K]
        return logits.softmax(dim=-1).mean(dim=1) @ v


class CrossDecode(nn.Module):
    """3x3 query conv, then windowed cross-attention computed in query chunks."""

    def __init__(self, qk_dim: int, num_heads: int, window_ratio: float):
        super().__init__()
        self.window_ratio = window_ratio
        self.conv2d = nn.Conv2d(qk_dim, qk_dim, 3, padding=1, bias=False)
        self.cross_attn = WindowCrossAttention(qk_dim, num_heads)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                q_chunk_size: Optional[int] = None) -> torch.Tensor:
        """q [B,D,H,W], k [B,D,h,w], v [B,C,h,w] -> [B,C,H,W].

        The [chunk, h*w] window mask of each chunk is built from per-row / per-column bounds on the fly.
        """
        b, _, out_h, out_w = q.shape
        _, c, in_h, in_w = v.shape
        q = self.conv2d(q).flatten(2).transpose(1, 2)
        k = k.flatten(2).transpose(1, 2)
        v = v.flatten(2).transpose(1, 2)
        row0, row1 = window_bounds(out_h, in_h, self.window_ratio, q.device)
        col0, col1 = window_bounds(out_w, in_w, self.window_ratio, q.device)
        key_row = torch.arange(in_h, device=q.device).repeat_interleave(in_w)  # [K]
        key_col = torch.arange(in_w, device=q.device).repeat(in_h)  # [K]
        n_q = out_h * out_w
        chunk = n_q if q_chunk_size is None else q_chunk_size
        outputs = []
        for start in range(0, n_q, chunk):
            idx = torch.arange(start, min(start + chunk, n_q), device=q.device)
            r, cc = idx // out_w, idx % out_w
            if self.window_ratio > 0:
                inside = ((key_row >= row0[r, None]) & (key_row < row1[r, None])
                          & (key_col >= col0[cc, None]) & (key_col < col1[cc, None]))
                masked = ~inside
            else:
                masked = torch.zeros(len(idx), in_h * in_w, dtype=torch.bool, device=q.device)
            outputs.append(self.cross_attn(q[:, start:start + len(idx)], k, v, masked))
        return torch.cat(outputs, dim=1).transpose(1, 2).reshape(b, c, out_h, out_w)


class AnyUp(nn.Module):
    """Image-guided, feature-agnostic upsampler: features [B,C,h,w] -> [B,C,H_out,W_out] in the same space.

    Args:
        qk_dim: width of the image / query / key encoders (128 in the released checkpoints).
        num_heads: attention heads; their attention weights are averaged.
        window_ratio: half-width of each query's key window, as a fraction of the image side.
        kernel_size_lfu: size of the feature-unification filters.
        q_chunk_size: default number of query pixels per attention chunk (None: all at once); bounds the
            attention memory to B x heads x chunk x (h*w) floats.
    """

    def __init__(self, qk_dim: int = 128, num_heads: int = 4, window_ratio: float = 0.1,
                 kernel_size_lfu: int = 5, q_chunk_size: Optional[int] = None):
        super().__init__()
        self.q_chunk_size = q_chunk_size
        self.image_encoder = _encoder(PointwiseConv(3, qk_dim), qk_dim)
        self.key_encoder = _encoder(PointwiseConv(qk_dim, qk_dim), qk_dim)
        self.query_encoder = _encoder(PointwiseConv(qk_dim, qk_dim), qk_dim)
        self.key_features_encoder = _encoder(LearnedFeatureUnification(qk_dim, kernel_size_lfu), qk_dim)
        self.cross_decode = CrossDecode(qk_dim, num_heads, window_ratio)
        self.aggregation = _encoder(nn.Conv2d(2 * qk_dim, qk_dim, 3, padding=1, padding_mode="reflect",
                                              bias=False), qk_dim)
        self.rope = RoPE(qk_dim)

    def load_weights(self, path: str) -> "AnyUp":
        """Load a released AnyUp checkpoint strictly; an empty path keeps the random initialisation."""
        if path:
            load_strict(self, load_weight_file(path, **WEIGHT_SPECS["anyup"]), component="AnyUp")
        return self

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """ImageNet-normalised image [B,3,H,W] -> RoPE-encoded pixel embeddings [B,D,H,W]."""
        return self.rope(self.image_encoder(image))

    def encode_keys(self, encoded_image: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Pixel embeddings [B,D,H,W] and features [B,C,h,w] -> keys [B,D,h,w] (before the key RMSNorm)."""
        k = F.adaptive_avg_pool2d(self.key_encoder(encoded_image), features.shape[-2:])
        k_feat = self.key_features_encoder(F.normalize(features, dim=1))
        return self.aggregation(torch.cat([k, k_feat], dim=1))

    def forward(self, image: torch.Tensor, features: torch.Tensor, output_size: Optional[Size] = None,
                q_chunk_size: Optional[int] = None) -> torch.Tensor:
        """image [B,3,H,W] (ImageNet-normalised), features [B,C,h,w] -> [B,C,H_out,W_out].

        ``output_size`` defaults to the image size (H, W); ``features.shape[-2:]`` refines in place.
        ``q_chunk_size`` overrides the constructor default; chunking does not change the result.
        """
        output_size = image.shape[-2:] if output_size is None else output_size
        encoded = self.encode_image(image)
        q = F.adaptive_avg_pool2d(self.query_encoder(encoded), output_size)
        k = self.encode_keys(encoded, features)
        chunk = self.q_chunk_size if q_chunk_size is None else q_chunk_size
        return self.cross_decode(q, k, features, chunk)
