"""The head is CAT-Seg's head (issue 10): class-axis padding, pooled class attention, the weight mapping, and
the parity check's power to tell a different head apart."""
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from dinov3seg.modeling.head.catseg_weights import checkpoint_filter_fn
from dinov3seg.modeling.head.class_refinement import ClassRefinement
from dinov3seg.tools.verify_parity import main, state_dict_sha256


def padded_reference(layer: ClassRefinement, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """CAT-Seg's order of operations with the padding materialised: pool, pad the class axis to pad_len with
    copies of the learned token and guidance, attend over all slots, MLP, drop the padding, upsample, add."""
    b, t, c, h, w = x.shape
    pooled = F.avg_pool2d(x.flatten(0, 1), layer.pooling).unflatten(0, (b, t))
    hp, wp = pooled.shape[-2:]
    tokens = rearrange(pooled, "b t c h w -> (b h w) t c")
    guidance = text.repeat_interleave(hp * wp, dim=0)
    n, pad = tokens.shape[0], max(layer.pad_len - t, 0)
    tokens = torch.cat([tokens, layer.padding_token.expand(n, pad, c)], dim=1)
    guidance = torch.cat([guidance, layer.padding_guidance.expand(n, pad, -1)], dim=1)
    normed = layer.norm1(tokens)
    split = lambda y: rearrange(y, "n t (heads d) -> n heads t d", heads=layer.num_heads)  # noqa: E731
    q = split(layer.q(torch.cat([normed, guidance], -1)))
    k = split(layer.k(torch.cat([normed, guidance], -1)))
    v = split(layer.v(normed))
    if layer.attention.__name__ == "linear_attention":
        q, k = F.elu(q) + 1, F.elu(k) + 1
        weights = q @ k.transpose(-1, -2)
        out = (weights / (weights.sum(-1, keepdim=True) + 1e-6)) @ v
    else:
        out = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1) @ v
    tokens = tokens + rearrange(out, "n heads t d -> n t (heads d)")
    tokens = (tokens + layer.mlp(layer.norm2(tokens)))[:, :t]
    refined = rearrange(tokens, "(b h w) t c -> (b t) c h w", b=b, h=hp)
    up = F.interpolate(refined, size=(h, w), mode="bilinear", align_corners=True)
    return x + up.unflatten(0, (b, t))


@pytest.mark.parametrize("attention", ["linear", "full"])
@pytest.mark.parametrize("pooling", [(1, 1), (2, 2), (3, 2)])
@pytest.mark.parametrize("t", [1, 5, 9])  # below, below, equal to pad_len
def test_shared_padding_key_equals_materialised_padding(attention, pooling, t):
    torch.manual_seed(0)
    layer = ClassRefinement(16, 8, 4, attention, pooling, pad_len=9).eval()
    assert not layer.padding_token.any() and not layer.padding_guidance.any()  # CAT-Seg's zero init
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))  # padding tokens too, so a wrong padding shows
        x, text = torch.randn(2, t, 16, 6, 6), torch.randn(2, t, 8)
        expected = padded_reference(layer, x, text)
        torch.testing.assert_close(layer(x, text), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(layer(x, text, chunk=2), expected, atol=1e-5, rtol=1e-5)  # pixel groups
        assert (layer(x, text) - layer(x, text, chunk=0) == 0).all()


def test_padding_costs_nothing_proportional_to_pad_len():
    """A pad_len of a billion runs at the size of the real classes: the padding slots are never materialised."""
    torch.manual_seed(0)
    layer = ClassRefinement(16, 8, 4, "full", (1, 1), pad_len=10**9).eval()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn_like(p))
        x = torch.randn(1, 3, 16, 4, 4)
        out = layer(x, torch.randn(1, 3, 8))
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_weight_mapping_drops_derived_masks_and_rejects_foreign_keys():
    state = {"layers.0.swin_block.block_2.attn_mask": torch.zeros(4, 36, 36),
             "layers.0.swin_block.block_2.attn.proj.weight": torch.ones(2, 2),
             "layers.1.attention.MLP.2.bias": torch.ones(2),
             "layers.0.attention.padding_tokens": torch.ones(1, 1, 2),
             "decoder2.conv.double_conv.4.weight": torch.ones(2), "upsample2.bias": torch.ones(2)}
    assert {k: tuple(v.shape) for k, v in checkpoint_filter_fn(state).items()} == {
        "spatial.0.blocks.1.proj.weight": (2, 2), "classes.1.mlp.fc2.bias": (2,),
        "classes.0.padding_token": (2,), "decoder.stages.1.conv.4.weight": (2,),
        "decoder_guidance_projections.1.0.bias": (2,)}
    with pytest.raises(KeyError, match="not a key of CAT-Seg's Aggregator"):
        checkpoint_filter_fn({"layers.0.attention.proj.weight": torch.ones(2, 2)})


def mutated(parity_dir, tmp_path, change):
    blob = torch.load(parity_dir / "catseg_aggregator_small.pt", map_location="cpu", weights_only=True)
    change(blob)
    blob["state_dict_sha256"] = state_dict_sha256(blob["state_dict"])
    torch.save(blob, tmp_path / "mutated.pt")
    return main([str(tmp_path / "mutated.pt")])


def test_public_fixture_passes_in_process(parity_dir, capsys):
    assert main([str(parity_dir / "catseg_aggregator_small.pt")]) == 0
    out = capsys.readouterr().out
    assert "pad_path_t7/logits(class_chunk_size=3)" in out and "topk_path_t23/logits " in out


@pytest.mark.parametrize("what,change", [
    ("zero padding token", lambda b: [b["state_dict"][f"layers.{i}.attention.padding_tokens"].zero_() for i in (0, 1)]),
    ("full attention", lambda b: b["config"]["aggregator"].update(attention_type="full")),
    ("no pooling", lambda b: b["config"]["aggregator"].update(pooling_size=(1, 1))),
    ("pad_len 8", lambda b: b["config"]["aggregator"].update(pad_len=8)),
])
def test_a_different_head_fails_the_parity_check(parity_dir, tmp_path, capsys, what, change):
    assert mutated(parity_dir, tmp_path, change) == 1, what
    assert "FAIL" in capsys.readouterr().out
