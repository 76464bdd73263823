"""The head's shared-guidance fast paths compute what the concatenation they replace computes (issue 6, item 2)."""
import torch
from torch import nn

from dinov3seg.modeling.head.common import guided_linear
from dinov3seg.modeling.head.decoder import UpsamplingDecoder, UpsamplingStage
from dinov3seg.modeling.head.spatial_refinement import GuidedSwinBlock


def test_spatial_guided_linear_equals_concatenation():
    torch.manual_seed(0)
    b, t, h, w, c, g = 2, 3, 5, 6, 8, 4
    layer = nn.Linear(c + g, c)
    tokens, guidance = torch.randn(b * t, h, w, c), torch.randn(b, h, w, g)
    expected = layer(torch.cat([tokens, guidance.repeat_interleave(t, dim=0)], dim=-1))
    torch.testing.assert_close(guided_linear(layer, tokens, guidance), expected)


def test_class_guided_linear_equals_concatenation():
    torch.manual_seed(0)
    b, hw, t, c, g = 2, 7, 5, 8, 4
    layer = nn.Linear(c + g, c)
    tokens, text = torch.randn(b * hw, t, c), torch.randn(b, t, g)
    expected = layer(torch.cat([tokens, text.repeat_interleave(hw, dim=0)], dim=-1))
    torch.testing.assert_close(guided_linear(layer, tokens, text), expected)


def test_decoder_stage_equals_concatenation():
    torch.manual_seed(0)
    b, t, c_in, c_out, g = 2, 3, 16, 8, 4
    stage = UpsamplingStage(c_in, c_out, g).eval()
    x, guidance = torch.randn(b * t, c_in, 5, 5), torch.randn(b, g, 10, 10)
    expected = stage.conv(torch.cat([stage.up(x), guidance.repeat_interleave(t, dim=0)], dim=1))
    torch.testing.assert_close(stage(x, guidance), expected)


def test_channels_last_decoder_equals_the_nchw_computation():
    torch.manual_seed(0)
    b, t = 2, 3
    decoder = UpsamplingDecoder(16, (8, 4), (4, 2)).eval()
    x = torch.randn(b, t, 16, 5, 5)
    guidance = [torch.randn(b, 4, 10, 10), torch.randn(b, 2, 20, 20)]
    y = x.flatten(0, 1)  # the contiguous NCHW path, stage by stage
    for stage, g in zip(decoder.stages, guidance):
        y = stage(y, g)
    expected = decoder.head(y).view(b, t, 20, 20)
    torch.testing.assert_close(decoder(x, guidance), expected)


def test_swin_block_guidance_is_shared_per_view():
    """Classes of one view see the same guidance: swapping views' guidance swaps their outputs."""
    torch.manual_seed(0)
    block = GuidedSwinBlock(dim=8, guidance_dim=4, num_heads=2, window=4, shift=2).eval()
    x, guidance = torch.randn(2 * 3, 8, 8, 8), torch.randn(2, 8, 8, 4)
    out = block(x, guidance)
    swapped = block(x.view(2, 3, 8, 8, 8).flip(0).flatten(0, 1), guidance.flip(0))
    torch.testing.assert_close(swapped.view(2, 3, 8, 8, 8).flip(0).flatten(0, 1), out)


def _swin_attention_by_windows(block: GuidedSwinBlock, tokens, guidance):
    """Reference for one block's attention: roll, then for every map and window a plain masked softmax attention
    among the window's tokens, where tokens from different regions of the rolled grid do not attend."""
    n, h, w, c = tokens.shape
    win, shift, heads = block.window, block.shift, block.num_heads
    region = torch.zeros(h, w, dtype=torch.long)
    for i, rows in enumerate((slice(0, h - win), slice(h - win, h - shift), slice(h - shift, h))):
        for j, cols in enumerate((slice(0, w - win), slice(w - win, w - shift), slice(w - shift, w))):
            region[rows, cols] = 3 * i + j
    rolled = tokens.roll((-shift, -shift), dims=(1, 2))
    g = guidance.roll((-shift, -shift), dims=(1, 2)).repeat_interleave(n // guidance.shape[0], dim=0)
    with_guidance = torch.cat([rolled, g], dim=-1)
    q, k, v = block.q(with_guidance), block.k(with_guidance), block.v(rolled)
    out = torch.empty_like(rolled)
    for y0 in range(0, h, win):
        for x0 in range(0, w, win):
            cell = (slice(None), slice(y0, y0 + win), slice(x0, x0 + win))
            split = lambda t: t[cell].reshape(n, win * win, heads, -1).transpose(1, 2)  # noqa: E731
            ids = region[cell[1:]].flatten()
            logits = split(q) @ split(k).transpose(-1, -2) / (c // heads) ** 0.5
            logits = logits.masked_fill(ids[:, None] != ids[None, :], float("-inf"))
            att = (logits.softmax(-1) @ split(v)).transpose(1, 2).reshape(n, win, win, c)
            out[cell] = att
    return out.roll((shift, shift), dims=(1, 2))


def test_shifted_swin_block_equals_attention_window_by_window():
    """The block's batched attention (windows folded into the head axis, one broadcast shift mask) is plain
    attention within each shifted window, masked across the regions the cyclic shift brings together."""
    torch.manual_seed(0)
    block = GuidedSwinBlock(dim=8, guidance_dim=4, num_heads=2, window=4, shift=2).eval()
    x, guidance = torch.randn(2 * 3, 8, 8, 8), torch.randn(2, 8, 8, 4)
    tokens = block.norm1(x)
    attended = _swin_attention_by_windows(block, tokens, guidance)
    expected = x + block.proj(attended)
    expected = expected + block.mlp(block.norm2(expected))
    torch.testing.assert_close(block(x, guidance), expected)
