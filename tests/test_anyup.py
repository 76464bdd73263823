"""AnyUp: parity with the official model (anyup_full.pt), chunking, output strides and feature widths."""
import json

import pytest
import torch
import torch.nn.functional as F

from dinov3seg.modeling.encoders.anyup import AnyUp, LearnedFeatureUnification, PointwiseConv, ResBlock, RoPE

TOL = dict(atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def fixture(parity_dir):
    path = parity_dir / "anyup_full.pt"
    if not path.is_file():
        pytest.skip(f"AnyUp parity fixture {path} not found")
    return torch.load(path, weights_only=True, map_location="cpu")


@pytest.fixture(scope="module")
def official(fixture):
    model = AnyUp().eval()
    model.load_state_dict(fixture["state_dict"], strict=True)
    return model


def test_keys_match_manifest(parity_dir):
    path = parity_dir / "manifests" / "anyup.json"
    if not path.is_file():
        pytest.skip(f"AnyUp manifest {path} not found")
    manifest = json.loads(path.read_text())["keys"]
    own = {k: list(v.shape) for k, v in AnyUp().state_dict().items()}
    assert own == {k: v["shape"] for k, v in manifest.items()}
    assert sum(p.numel() for p in AnyUp().parameters()) == 878080


def test_fast_layers_equal_their_convolutions():
    """PointwiseConv is a 1x1 conv; the per-image, unfolded feature unification is the batched convolution
    whose C x M responses are re-read as M x C (the official grouping, C != M here)."""
    torch.manual_seed(0)
    conv = PointwiseConv(6, 5)
    x = torch.randn(2, 6, 7, 9)
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight))

    lfu = LearnedFeatureUnification(num_filters=4, kernel_size=5)
    b, c, h, w = 3, 10, 6, 7
    features = torch.randn(b, c, h, w)
    responses = F.conv2d(features.reshape(b * c, 1, h, w), lfu.basis, padding=2)
    taps = F.conv2d(torch.ones(1, 1, h, w), torch.ones(1, 1, 5, 5), padding=2)
    expected = (responses / taps).reshape(b, 4, c, h, w).softmax(dim=1).mean(dim=2)
    torch.testing.assert_close(lfu(features), expected)


@pytest.mark.parametrize("channels, filters", [(12, 4), (4, 4), (6, 4)])  # fused (C/M = 3, 1), volume
def test_feature_unification_equals_the_convolution(channels, filters, monkeypatch):
    """Fused (M divides C: per channel group and pixel chunk, 9 x 11 = 99 pixels in chunks of 40 -> an uneven
    last chunk) and volume paths against the batched convolution whose C x M responses are re-read as M x C."""
    monkeypatch.setattr(LearnedFeatureUnification, "PIXEL_CHUNK", 40)
    torch.manual_seed(0)
    lfu = LearnedFeatureUnification(num_filters=filters, kernel_size=5)
    lfu.basis.data *= 3  # peaked softmaxes
    b, h, w = 2, 9, 11
    features = torch.randn(b, channels, h, w)
    responses = F.conv2d(features.reshape(b * channels, 1, h, w), lfu.basis, padding=2)
    taps = F.conv2d(torch.ones(1, 1, h, w), torch.ones(1, 1, 5, 5), padding=2)
    expected = (responses / taps).reshape(b, filters, channels, h, w).softmax(dim=1).mean(dim=2)
    torch.testing.assert_close(lfu(features), expected, atol=1e-7, rtol=1e-6)


def test_pooled_resblock_and_rope_equal_their_definitions():
    """ResBlock.forward_pooled = pool(block(x)) (the last 1x1 conv moved after the pooling), in place under
    no_grad and out of place with autograd; RoPE = x cos + rotate_half(x) sin."""
    torch.manual_seed(0)
    block, x = ResBlock(16), torch.randn(2, 16, 32, 48)
    reference = lambda t: t + block.block(t)  # noqa: E731
    with torch.no_grad():
        torch.testing.assert_close(block(x), reference(x))
        torch.testing.assert_close(block.forward_pooled(x, (4, 6)), F.adaptive_avg_pool2d(reference(x), (4, 6)))
    leaf = x.clone().requires_grad_()
    pooled = block.forward_pooled(block(leaf), (4, 6))
    pooled.sum().backward()
    assert leaf.grad is not None and torch.isfinite(leaf.grad).all()
    torch.testing.assert_close(pooled.detach(), F.adaptive_avg_pool2d(reference(reference(x)), (4, 6)))

    rope, x = RoPE(16), torch.randn(2, 16, 5, 7)
    coords = torch.stack(torch.meshgrid(torch.linspace(0, 1, 5), torch.linspace(0, 1, 7), indexing="ij"), dim=-1)
    angle = (coords.reshape(35, 2) @ rope.freqs).t().reshape(1, 16, 5, 7)
    x1, x2 = x.chunk(2, dim=1)
    with torch.no_grad():
        torch.testing.assert_close(rope(x), x * angle.cos() + torch.cat((-x2, x1), dim=1) * angle.sin())


def test_float32_matches_float64():
    """The whole fp32 forward against the same weights in float64: fp32 rounding only (the LFU output is
    nearly constant, so the GroupNorm that follows it amplifies rounding to ~1e-4 in any summation order)."""
    torch.manual_seed(0)
    model = AnyUp().eval()
    image, features = torch.randn(2, 3, 96, 96), torch.randn(2, 256, 6, 6)
    with torch.no_grad():
        ours = model(image, features, output_size=(12, 12))
        exact = model.double()(image.double(), features.double(), output_size=(12, 12))
    torch.testing.assert_close(ours.double(), exact, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("case", ["sq96", "rect128x192"])
def test_parity(official, fixture, case):
    image, features = fixture["inputs"][case]["image"], fixture["inputs"][case]["features"]
    expected = fixture["outputs"][case]
    with torch.no_grad():
        encoded = official.encode_image(image)
        torch.testing.assert_close(official.key_features_encoder(F.normalize(features, dim=1)),
                                   expected["key_features_encoder"], **TOL)
        torch.testing.assert_close(official.encode_keys(encoded, features), expected["k_aggregated"], **TOL)
        torch.testing.assert_close(official(image, features), expected["out_default"], **TOL)
        torch.testing.assert_close(official(image, features, output_size=features.shape[-2:]),
                                   expected["out_feature_grid"], **TOL)


@pytest.mark.parametrize("case", ["sq96", "rect128x192"])
def test_chunked_equals_unchunked(official, fixture, case):
    image, features = fixture["inputs"][case]["image"], fixture["inputs"][case]["features"]
    with torch.no_grad():
        full = official(image, features)
        chunked = official(image, features, q_chunk_size=997)  # uneven last chunk
    torch.testing.assert_close(chunked, full, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("scale", [1, 2, 4])  # output stride 16, 8, 4 for ViT/16 features
@pytest.mark.parametrize("channels", [1, 7, 129])
def test_output_strides_and_widths(scale, channels):
    torch.manual_seed(0)
    model = AnyUp().eval()
    image, features = torch.randn(2, 3, 80, 112), torch.randn(2, channels, 5, 7)
    with torch.no_grad():
        out = model(image, features, output_size=(5 * scale, 7 * scale), q_chunk_size=64)
    assert out.shape == (2, channels, 5 * scale, 7 * scale)
    # every output vector is a convex combination of input vectors: within the per-channel input range
    lo, hi = features.amin(dim=(2, 3)), features.amax(dim=(2, 3))
    assert (out >= lo[..., None, None] - 1e-5).all() and (out <= hi[..., None, None] + 1e-5).all()


def test_constant_features_are_preserved():
    model = AnyUp().eval()
    features = torch.randn(1, 16, 1, 1).expand(1, 16, 6, 6)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 96, 96), features, output_size=(24, 24))
    torch.testing.assert_close(out, features[..., :1, :1].expand_as(out))
