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

from ..fused_linear import linear
from ..precision import fp32_region, norm_in_input_dtype
from .weights import WEIGHT_SPECS, load_strict, load_weight_file

__all__ = ["AnyUp"]

Size = Union[int, Tuple[int, int]]


class PointwiseConv(nn.Conv2d):
    """Bias-free 1x1 convolution computed as one matmul over the pixels: [B,C,H,W] -> [B,O,H,W] channels-last.

    The same function and parameters as ``nn.Conv2d(C, O, 1, bias=False)``. Its output is channels-last (NHWC in
    memory), so AnyUp's image-resolution maps are from the first layer on: there each product is one
    [B*H*W, C] x [C, O] matmul, and on CPU the bf16 GroupNorm with fp32 affine runs 2.7x faster than on NCHW
    maps (5 x 128 x 384 x 384 on an AMX Xeon; element-wise ops and pooling keep the layout).
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x [B,C,H,W] -> [B,O,H,W]; plus ``residual`` [B,O,H,W] if given, added inside the product on CPU
        inference (:func:`~..fused_linear.linear`)."""
        nhwc = lambda y: None if y is None else y.permute(0, 2, 3, 1)  # noqa: E731
        return linear(nhwc(x), self.weight.flatten(1), residual=nhwc(residual)).permute(0, 3, 1, 2)


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """bf16 / fp16 -> fp32; fp32 and fp64 unchanged (the parts kept in fp32 under bf16 autocast)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _no_autograd(x: torch.Tensor) -> bool:
    """True when no graph is recorded through ``x``: in-place updates of fresh intermediates are then safe.

    (AnyUp is frozen and the meta-architecture runs it under ``no_grad``; at 384 x 384 each 128-channel map
    is 75 MB, and on CPU every fresh buffer of that size costs page faults as well as a memory pass.)
    """
    return not (torch.is_grad_enabled() and x.requires_grad)


class ResBlock(nn.Module):
    """Pre-activation residual block (GroupNorm(8) -> SiLU -> 1x1 conv) x 2; [B,C,H,W] -> [B,C,H,W]."""

    def __init__(self, channels: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.GroupNorm(8, channels), nn.SiLU(), PointwiseConv(channels, channels),
            nn.GroupNorm(8, channels), nn.SiLU(), PointwiseConv(channels, channels),
        )

    def _residual(self, x: torch.Tensor) -> torch.Tensor:
        """Everything before the last 1x1 conv: SiLU(GN(conv(SiLU(GN(x))))) [B,C,H,W]. The norms keep the maps'
        dtype (bf16 under CPU autocast) with fp32 statistics (:func:`~..precision.norm_in_input_dtype`)."""
        norm1, _, conv1, norm2, _, _ = self.block
        inplace = _no_autograd(x)
        h = conv1(F.silu(norm_in_input_dtype(norm1, x), inplace=inplace))
        return F.silu(norm_in_input_dtype(norm2, h), inplace=inplace)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block[5](self._residual(x), residual=x)

    def forward_pooled(self, x: torch.Tensor, size: Size) -> torch.Tensor:
        """``adaptive_avg_pool2d(self(x), size)`` with the last 1x1 conv and the skip applied after pooling.

        Average pooling is linear, so it commutes with the bias-free 1x1 conv and with the sum: the same
        function, one full-resolution matmul and one full-resolution add fewer (fp32 rounding aside).
        """
        h = F.adaptive_avg_pool2d(self._residual(x), size)
        return self.block[5](h, residual=F.adaptive_avg_pool2d(x, size))


class LearnedFeatureUnification(nn.Module):
    """Channel-count-agnostic first layer: [B,C,h,w] features -> [B,M,h,w] local-structure map.

    Every input channel is convolved (zero padding, normalised by the number of valid taps) with the same bank
    of M ``basis`` filters. The B x (C*M) responses, laid out channel-major, are then read as an M x C grid, a
    softmax runs over the M axis and the result is averaged over the C axis. This grouping reproduces the
    released checkpoints' computation exactly (it coincides with "softmax over filters per channel" only
    when C == M).

    When M divides C the filter bank, softmax and mean run fused, per image, per group of C/M channels and per
    chunk of pixels, without ever holding the C x M response volume (the same values up to fp32 summation
    order); otherwise the volume is computed image by image.
    """

    # Pixels per step of the fused filter / softmax / mean below: one step's M x P x M responses (4 MB) stay in
    # cache, where the C x M x h*w volume (1024 x 128 x 576 fp32 = 302 MB per ViT-L view) would not (a whole view
    # per step, 38 MB, took 2.2x the CPU time on one AMX Xeon core).
    PIXEL_CHUNK = 64

    def __init__(self, num_filters: int, kernel_size: int):
        super().__init__()
        self.basis = nn.Parameter(torch.randn(num_filters, 1, kernel_size, kernel_size))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # fp32 under bf16 autocast too, by design: the output is nearly constant (~1/M) and the GroupNorm that
        # follows divides by its tiny spread, so bf16 responses would reach the keys as errors of ~5e-2.
        with fp32_region(features.device):
            return self._forward(_at_least_fp32(features))

    def _forward(self, features: torch.Tensor) -> torch.Tensor:
        b, c, h, w = features.shape
        m, _, k, _ = self.basis.shape
        if c % m:
            return self._forward_volume(features)
        # Channel c = g * G + r (G = C/M) of the C x M volume lands in row g of the M x C grid, so the softmax
        # runs over g for each (r, filter) and the mean over all (r, filter) pairs. Channels-last taps
        # [k*k, pixels, g] put g last: one matmul per chunk, then a softmax over contiguous memory.
        basis, group = self.basis.flatten(1), c // m  # [M, k*k]
        out = features.new_zeros(b, h * w, m)
        for i in range(b):
            # [G (r), h+k-1, w+k-1, M (g)], contiguous: each r's taps are slices with contiguous channels
            padded = F.pad(features[i], (k // 2,) * 4).unflatten(0, (m, group)).permute(1, 2, 3, 0).contiguous()
            for r in range(group):
                taps = self._taps(padded[r], h, w)  # [k*k, h*w, M (g)]
                for p0 in range(0, h * w, self.PIXEL_CHUNK):
                    chunk = taps[:, p0:p0 + self.PIXEL_CHUNK]
                    responses = (basis @ chunk.flatten(1)).view(m, -1, m)  # [filter, P, g]
                    out[i, p0:p0 + self.PIXEL_CHUNK] += responses.softmax(dim=-1).sum(dim=0)
        return out.div_(c).transpose(1, 2).reshape(b, m, h, w)

    def _taps(self, padded: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Zero-padded channels-last map [h+k-1, w+k-1, C] -> [k*k, h*w, C]: every pixel's k x k neighbourhood
        (row-major taps), divided by the count of taps inside the map. Shifted slices: the same values as
        ``F.unfold``, whose single-channel im2col is slow on CPU."""
        k = self.basis.shape[-1]
        taps = torch.stack([padded[i:i + h, j:j + w] for i in range(k) for j in range(k)]).flatten(1, 2)
        ones = padded.new_ones(1, 1, h, w)
        valid = F.conv2d(ones, torch.ones_like(self.basis[:1]), padding=k // 2)  # [1, 1, h, w]
        return taps.div_(valid.view(1, h * w, 1))

    def _forward_volume(self, features: torch.Tensor) -> torch.Tensor:
        """The unfused computation (any C and M): the full C x M response volume per image."""
        _, c, h, w = features.shape
        m, _, k, _ = self.basis.shape
        maps = []
        for image in features:
            taps = self._taps(F.pad(image, (k // 2,) * 4).permute(1, 2, 0), h, w)  # [k*k, h*w, C]
            responses = torch.matmul(self.basis.flatten(1), taps.permute(2, 0, 1))  # [C, M, h*w]
            maps.append(responses.view(m, c, h, w).softmax(dim=0).mean(dim=1))
        return torch.stack(maps)


def _encoder(first: nn.Module, dim: int) -> nn.Sequential:
    """``first`` layer followed by two ResBlocks (checkpoint layout ``<name>.{0,1,2}``)."""
    return nn.Sequential(first, ResBlock(dim), ResBlock(dim))


def _encode_pooled(encoder: nn.Sequential, x: torch.Tensor, size: Size) -> torch.Tensor:
    """``adaptive_avg_pool2d(encoder(x), size)`` for an :func:`_encoder`, pooling before its last linear layer."""
    first, block1, block2 = encoder
    return block2.forward_pooled(block1(first(x)), size)


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
        # Angles reach 2 pi x 100 rad: coordinates, angles and sin/cos stay fp32 under autocast (by design).
        dtype = torch.promote_types(x.dtype, torch.float32)
        with fp32_region(x.device):
            ys = torch.linspace(0, 1, h, device=x.device, dtype=dtype)
            xs = torch.linspace(0, 1, w, device=x.device, dtype=dtype)
            coords = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(h * w, 2)
            angle = (coords @ self.freqs.to(dtype)).view(1, h, w, d).permute(0, 3, 1, 2)  # channels-last
            if not x.is_contiguous(memory_format=torch.channels_last):
                angle = angle.contiguous()  # the layout of x: products of mixed layouts run 10x slower on CPU
        cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
        # x * cos + rotate_half(x) * sin with rotate_half(x) = (-x2, x1), written half by half into one buffer
        out = torch.empty_like(x)
        (x1, x2), (o1, o2) = x.chunk(2, dim=1), out.chunk(2, dim=1)
        (c1, c2), (s1, s2) = cos.chunk(2, dim=1), sin.chunk(2, dim=1)
        torch.mul(x1, c1, out=o1).addcmul_(x2, s1, value=-1)
        torch.mul(x2, c2, out=o2).addcmul_(x1, s2)
        return out


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
        return _at_least_fp32(logits).softmax(dim=-1).mean(dim=1) @ v  # softmax in fp32 under autocast (by design)


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

    def encode_pixels(self, image: torch.Tensor, query_size: Size, key_size: Size) -> Tuple[torch.Tensor, torch.Tensor]:
        """The image-resolution part (what MODEL.COMPILE compiles): image [B,3,H,W] -> queries [B,D,*query_size]
        and image keys [B,D,*key_size], each encoder pooled to its grid."""
        encoded = self.encode_image(image)
        return (_encode_pooled(self.query_encoder, encoded, query_size),
                _encode_pooled(self.key_encoder, encoded, key_size))

    def aggregate_keys(self, image_keys: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Pooled image keys [B,D,h,w] and features [B,C,h,w] -> keys [B,D,h,w] (before the key RMSNorm)."""
        k_feat = self.key_features_encoder(F.normalize(features, dim=1))
        return self.aggregation(torch.cat([image_keys, k_feat], dim=1))

    def encode_keys(self, encoded_image: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Pixel embeddings [B,D,H,W] and features [B,C,h,w] -> keys [B,D,h,w] (before the key RMSNorm)."""
        return self.aggregate_keys(_encode_pooled(self.key_encoder, encoded_image, features.shape[-2:]), features)

    def forward(self, image: torch.Tensor, features: torch.Tensor, output_size: Optional[Size] = None,
                q_chunk_size: Optional[int] = None) -> torch.Tensor:
        """image [B,3,H,W] (ImageNet-normalised), features [B,C,h,w] -> [B,C,H_out,W_out].

        ``output_size`` defaults to the image size (H, W); ``features.shape[-2:]`` refines in place.
        ``q_chunk_size`` overrides the constructor default; chunking does not change the result.
        """
        output_size = image.shape[-2:] if output_size is None else output_size
        q, k_image = self.encode_pixels(image, tuple(output_size), tuple(features.shape[-2:]))
        k = self.aggregate_keys(k_image, features)
        chunk = self.q_chunk_size if q_chunk_size is None else q_chunk_size
        return self.cross_decode(q, k, features, chunk)
