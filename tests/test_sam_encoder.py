"""SAM prior encoder: view-size outputs, checkpoint adaptation, hooks, and key/shape parity with the releases."""
import json

import pytest
import torch
from segment_anything.modeling.image_encoder import Block, get_rel_pos

from dinov3seg.modeling.encoders.sam import SAMPriorEncoder, adapt_sam_state_dict

TINY = dict(variant=None, embed_dim=32, depth=4, num_heads=2, global_attn_indexes=(1, 3))


def fake_sam_checkpoint(encoder: SAMPriorEncoder) -> dict:
    """A full-SAM-style state dict (random values) for ``encoder``'s sizes at SAM's native 1024 input."""
    torch.manual_seed(0)
    state = {"image_encoder." + k: torch.randn(v.shape) * 0.02 for k, v in encoder.image_encoder.state_dict().items()}
    state["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"] = torch.randn(2, 128)
    state["mask_decoder.iou_token.weight"] = torch.randn(1, 256)
    return state


def test_tiny_view_outputs_and_hooks():
    encoder = SAMPriorEncoder(image_size=384, **TINY)
    assert not any(p.requires_grad for p in encoder.parameters())
    with torch.no_grad():
        out = encoder(torch.randn(2, 3, 384, 384))
    assert out["neck"].shape == (2, 256, 24, 24)
    assert len(out["guidance"]) == 2
    assert all(g.shape == (2, 32, 24, 24) for g in out["guidance"])
    with torch.no_grad():  # hooks reset between calls
        assert len(encoder(torch.randn(1, 3, 384, 384))["guidance"]) == 2
    with pytest.raises(ValueError, match="384x384"):
        encoder(torch.randn(1, 3, 256, 256))


@pytest.mark.parametrize("image_size", [384, 448])  # 24x24 grid: pads to 28x28 for 14x14 windows; 28x28: no pad
def test_blocks_run_one_sdpa_and_skip_the_padding_with_the_same_result(image_size):
    torch.manual_seed(0)
    encoder = SAMPriorEncoder(image_size=image_size, **TINY)
    blocks = encoder.image_encoder.blocks
    assert sorted(b.window_size > 0 for b in blocks) == [False, False, True, True]  # 2 global, 2 windowed
    assert all("forward" in vars(b) for b in blocks)
    grid = image_size // 16
    with torch.no_grad():
        for block in blocks:
            for rel_pos in (block.attn.rel_pos_h, block.attn.rel_pos_w):
                rel_pos.normal_()  # SAM initialises them to zero
            x = torch.randn(2, grid, grid, 32)
            torch.testing.assert_close(block(x), Block.forward(block, x), atol=1e-5, rtol=1e-5)


def test_checkpoint_adaptation_matches_runtime_interpolation():
    """Loading a 64x64 checkpoint at 384 = SAM at 1024 weights with only pos_embed resized (get_rel_pos path)."""
    native = SAMPriorEncoder(image_size=1024, **TINY)
    checkpoint = fake_sam_checkpoint(native)
    native.load_state_dict_from_sam(checkpoint)
    view = SAMPriorEncoder(image_size=384, **TINY)
    dropped = view.load_state_dict_from_sam(checkpoint)
    assert dropped == ["mask_decoder.iou_token.weight", "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"]
    assert view.image_encoder.pos_embed.shape == (1, 24, 24, 32)
    table = checkpoint["image_encoder.blocks.1.attn.rel_pos_h"]  # global block: 127 -> 47 entries
    assert view.image_encoder.blocks[1].attn.rel_pos_h.shape == (47, 16)
    rel = torch.arange(24)[:, None] - torch.arange(24)[None] + 23
    torch.testing.assert_close(view.image_encoder.blocks[1].attn.rel_pos_h[rel], get_rel_pos(24, 24, table))
    assert view.image_encoder.blocks[0].attn.rel_pos_h.shape == (27, 16)  # windowed block unchanged

    native.image_encoder.pos_embed = torch.nn.Parameter(view.image_encoder.pos_embed.clone())
    x = torch.randn(1, 3, 384, 384)
    with torch.no_grad():
        expected, actual = native.image_encoder(x), view(x)["neck"]
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_unexpected_checkpoint_keys_are_reported():
    encoder = SAMPriorEncoder(image_size=384, **TINY)
    checkpoint = fake_sam_checkpoint(SAMPriorEncoder(image_size=1024, **TINY))
    checkpoint["text_encoder.weight"] = torch.zeros(1)
    del checkpoint["image_encoder.neck.0.weight"]
    with pytest.raises(RuntimeError, match=r"(?s)missing \(1\): image_encoder.neck.0.weight.*unexpected \(1\)"):
        encoder.load_state_dict_from_sam(checkpoint)


@pytest.mark.parametrize("variant", ["vit_l", "vit_b"])
def test_full_size_matches_manifest(parity_dir, variant):
    manifest = json.loads((parity_dir / "manifests" / f"sam_{variant}.json").read_text())["keys"]
    with torch.device("meta"):
        native = SAMPriorEncoder(variant, image_size=1024)
        view = SAMPriorEncoder(variant, image_size=384)
    own = {k: list(v.shape) for k, v in native.state_dict().items()}
    assert own == {k: v["shape"] for k, v in manifest.items() if k.startswith("image_encoder.")}
    checkpoint = {k: torch.empty(v["shape"], device="meta") for k, v in manifest.items()}
    dropped = view.load_state_dict_from_sam(checkpoint)
    assert set(dropped) == {k for k in manifest if not k.startswith("image_encoder.")}
    assert all(k.startswith(("prompt_encoder.", "mask_decoder.")) for k in dropped)
    adapted = adapt_sam_state_dict(checkpoint, view.image_encoder)
    assert adapted["image_encoder.pos_embed"].shape == (1, 24, 24, view.guidance_channels)
