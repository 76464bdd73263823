"""DINOv3 ViT: parity with the official model (dinov3_vit_small.pt), sizes, and the full ViT-L/16 key set."""
import json

import pytest
import torch
from torch.testing import assert_close

from dinov3seg.modeling.encoders.dinov3 import DINOv3ViT, dinov3_vitl16
from dinov3seg.tools.verify_parity import build_dinov3_vit, load_dinov3_vit
from conftest import load_parity_fixture

TOL = dict(atol=1e-4, rtol=1e-4)
BF16_PERIODS = [1.0, 1.3359375, 1.78125, 2.375, 3.15625, 4.21875, 5.625, 7.5, 10.0, 13.3125, 17.75, 23.75,
                31.625, 42.25, 56.25, 75.0]


@pytest.fixture(scope="module")
def blob(parity_dir):
    return load_parity_fixture(parity_dir, "dinov3_vit_small.pt", "DINOv3 parity fixture")


@pytest.fixture(scope="module")
def model(blob):
    return load_dinov3_vit(blob)


@pytest.mark.parametrize("name", ["img_224", "img_nonsquare"])
def test_forward_features(model, blob, name):
    expected = blob["outputs"][name]
    with torch.no_grad():
        ours = model.forward_features(blob["inputs"][name])
    for key in ("x_norm_clstoken", "x_storage_tokens", "x_norm_patchtokens"):
        assert_close(ours[key], expected[key], **TOL)


@pytest.mark.parametrize("name", ["img_224", "img_nonsquare"])
def test_intermediate_layers_and_rope(model, blob, name):
    x, expected = blob["inputs"][name], blob["outputs"][name]
    with torch.no_grad():
        layers = model.get_intermediate_layers(x, n=expected["gil_n"], reshape=True, return_class_token=True)
        sin, cos = model.rope_embed(H=x.shape[-2] // 16, W=x.shape[-1] // 16)
    for (patches, cls), exp_patches, exp_cls in zip(layers, expected["gil_patch"], expected["gil_cls"]):
        assert_close(patches, exp_patches, **TOL)
        assert_close(cls, exp_cls, **TOL)
    assert_close(sin, expected["rope_sin"], **TOL)
    assert_close(cos, expected["rope_cos"], **TOL)


def test_unnormed_blocks_non_square(model, blob):
    expected = blob["outputs"]["img_nonsquare"]["blocks_out_unnormed"]
    with torch.no_grad():
        ours = model.get_intermediate_layers(blob["inputs"]["img_nonsquare"], n=len(expected), norm=False)
    for a, e in zip(ours, expected):
        assert_close(a, e, **TOL)


def test_masked_qkv_bias(blob):
    """Non-zero qkv bias with the 1/0/1 mask: the effective bias is bias * bias_mask."""
    extra = blob["extra_random_qkv_bias"]
    model = build_dinov3_vit(blob["config"])
    model.load_state_dict({**blob["state_dict"], **extra["state_dict_overrides"]}, strict=True)
    with torch.no_grad():
        ours = model.forward_features(blob["inputs"][extra["input"]])
    for key in ("x_norm_clstoken", "x_storage_tokens", "x_norm_patchtokens"):
        assert_close(ours[key], extra[key], **TOL)


def test_fresh_rope_periods_are_bf16_rounded(blob):
    fresh = build_dinov3_vit(blob["config"]).rope_embed.periods
    assert fresh.dtype == torch.float32
    assert fresh.tolist() == BF16_PERIODS
    assert torch.equal(fresh, blob["state_dict"]["rope_embed.periods"])


def test_non_square_input_shapes():
    model = DINOv3ViT(embed_dim=64, depth=2, num_heads=1).eval()
    x = torch.randn(2, 3, 32, 80)
    with torch.no_grad():
        feats = model.forward_features(x)
        (patches, cls, storage), = model.get_intermediate_layers(
            x, n=1, reshape=True, return_class_token=True, return_extra_tokens=True
        )
    assert feats["x_norm_clstoken"].shape == (2, 64)
    assert feats["x_storage_tokens"].shape == (2, 4, 64)
    assert feats["x_norm_patchtokens"].shape == (2, 10, 64)
    assert patches.shape == (2, 64, 2, 5)
    assert_close(patches.flatten(2).transpose(1, 2), feats["x_norm_patchtokens"])
    assert_close(cls, feats["x_norm_clstoken"])
    assert_close(storage, feats["x_storage_tokens"])


def test_intermediate_layer_selection():
    model = DINOv3ViT(embed_dim=64, depth=3, num_heads=1).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        last_two = model.get_intermediate_layers(x, n=2)
        by_index = model.get_intermediate_layers(x, n=[1, 2])
    assert len(last_two) == 2 and all(t.shape == (1, 4, 64) for t in last_two)
    for a, b in zip(last_two, by_index):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="block indices"):
        model.get_intermediate_layers(x, n=[3])


@pytest.mark.parametrize("size", [(224, 230), (100, 224)])
def test_bad_input_size_raises(size):
    model = DINOv3ViT(embed_dim=64, depth=1, num_heads=1)
    with pytest.raises(ValueError, match="multiple of the patch size 16"):
        model.forward_features(torch.zeros(1, 3, *size))


def test_vitl16_keys_and_shapes_match_release(parity_dir):
    manifest = json.loads((parity_dir / "manifests" / "dinov3_vitl16_pretrain_lvd1689m.json").read_text())
    with torch.device("meta"):
        model = dinov3_vitl16()
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == {k: v["shape"] for k, v in manifest["keys"].items()}
    assert len(ours) == manifest["n_keys"] == 368
    assert sum(v.numel() for v in model.state_dict().values()) == manifest["n_elements"]
