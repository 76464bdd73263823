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
