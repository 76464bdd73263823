"""The full vitl_384 model, built on the meta device (no memory, no weight files), against the key/shape
manifests of the released checkpoints in shared/parity/manifests (issue 3, item 7)."""
import json

import pytest
import torch

from dinov3seg.modeling.encoders.dinotxt import FILE_PREFIXES
from dinov3seg.modeling.encoders.sam import SAMPriorEncoder
from dinov3seg.config import get_dinov3seg_cfg as setup_cfg
from dinov3seg.tools.count_params import build_on_meta, count_params, format_params


@pytest.fixture(scope="module")
def full_model():
    return build_on_meta(setup_cfg("configs/vitl_384.yaml", []))


@pytest.fixture(scope="module")
def manifests(parity_dir):
    folder = parity_dir / "manifests"
    if not folder.is_dir():
        pytest.skip(f"no manifests folder in {parity_dir}")
    return folder


def _manifest(folder, name):
    path = folder / name
    if not path.is_file():
        pytest.skip(f"manifest {path} not found")
    return {k: tuple(v["shape"]) for k, v in json.loads(path.read_text())["keys"].items()}


def _shapes(module, prefix=""):
    return {prefix + k: tuple(v.shape) for k, v in module.state_dict().items()}


def _assert_same(ours, theirs, what):
    missing, unexpected = sorted(set(theirs) - set(ours)), sorted(set(ours) - set(theirs))
    shapes = [f"{k}: ours {ours[k]} vs file {theirs[k]}" for k in sorted(set(ours) & set(theirs)) if ours[k] != theirs[k]]
    assert not (missing or unexpected or shapes), (
        f"{what}: not in our model {missing[:10]}, not in the file {unexpected[:10]}, shapes {shapes[:10]}")


def test_full_model_is_on_meta(full_model):
    assert all(p.device.type == "meta" for p in full_model.parameters())


def test_dinov3_backbone_matches_manifest(full_model, manifests):
    theirs = _manifest(manifests, "dinov3_vitl16_pretrain_lvd1689m.json")
    _assert_same(_shapes(full_model.dinotxt.backbone), theirs, "DINOv3 ViT-L/16")


def test_dinotxt_head_and_text_match_manifest(full_model, manifests):
    theirs = _manifest(manifests, "dinov3_vitl16_dinotxt_vision_head_and_text_encoder.json")
    # The file's names mapped to ours exactly as DINOTxt.load_dinotxt_state_dict does.
    mapped = {}
    for key, shape in theirs.items():
        prefix = next(p for p in FILE_PREFIXES if key.startswith(p))
        mapped[FILE_PREFIXES[prefix] + key[len(prefix):]] = shape
    ours = {k: v for k, v in _shapes(full_model.dinotxt).items() if not k.startswith("backbone.")}
    _assert_same(ours, mapped, "dinov3.txt vision head + text tower")


def test_anyup_matches_manifest(full_model, manifests):
    _assert_same(_shapes(full_model.anyup), _manifest(manifests, "anyup.json"), "AnyUp")


def _sam_image_encoder_manifest(manifests):
    return {k: v for k, v in _manifest(manifests, "sam_vit_l.json").items() if k.startswith("image_encoder.")}


def test_sam_image_encoder_matches_manifest_at_1024(manifests):
    with torch.device("meta"):
        sam = SAMPriorEncoder("vit_l", 1024)
    _assert_same(_shapes(sam), _sam_image_encoder_manifest(manifests), "SAM ViT-L image encoder at 1024")


def test_sam_image_encoder_at_384_differs_only_by_resampled_positions(full_model, manifests):
    """At 384 the keys are the same; pos_embed (64x64 -> 24x24) and the global blocks' rel_pos tables
    (127 -> 47 entries) are resampled at load time by adapt_sam_state_dict."""
    theirs = _sam_image_encoder_manifest(manifests)
    ours = _shapes(full_model.sam)
    assert set(ours) == set(theirs)
    differing = {k for k in ours if ours[k] != theirs[k]}
    global_blocks = {f"image_encoder.blocks.{i}.attn.rel_pos_{a}" for i in full_model.sam.global_attn_indexes
                     for a in "hw"}
    assert differing == {"image_encoder.pos_embed"} | global_blocks
    assert ours["image_encoder.pos_embed"] == (1, 24, 24, 1024)
    assert all(ours[k] == (47, 64) and theirs[k] == (127, 64) for k in global_blocks)


def test_full_model_parameter_count(full_model):
    counts = count_params(full_model)
    print(format_params(counts))
    assert counts["dinov3_backbone"]["total"] == 303_154_176
    assert 1.0e9 < counts["all"]["total"] < 1.25e9  # paper: ~1.1 B
    frozen = ("dinov3_backbone", "dinotxt_vision_head", "text_tower", "anyup", "sam")
    assert all(counts[name]["trainable"] == 0 for name in frozen)
    assert counts["all"]["trainable"] == counts["head"]["total"] + counts["decoder"]["total"]
