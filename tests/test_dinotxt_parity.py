"""dinov3.txt: parity with the official model (dinotxt_small.pt), the file loader, and the full-size key set."""
import json

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from dinov3seg.modeling.encoders.dinotxt import FILE_PREFIXES, dinov3_vitl16_dinotxt
from dinov3seg.tools.verify_parity import build_dinotxt, load_dinov3_vit

TOL = dict(atol=1e-4, rtol=1e-4)
IMAGES = ["img_224", "img_nonsquare"]


@pytest.fixture(scope="module")
def blobs(parity_dir):
    path = parity_dir / "dinotxt_small.pt"
    if not path.is_file():
        pytest.skip(f"dinov3.txt parity fixture {path} not found")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    backbone = torch.load(parity_dir / blob["config"]["backbone_fixture"], map_location="cpu", weights_only=True)
    assert backbone["state_dict_sha256"] == blob["config"]["backbone_state_dict_sha256"]
    return blob, backbone


def build(blobs):
    blob, backbone_blob = blobs
    return build_dinotxt(blob["config"], load_dinov3_vit(backbone_blob))


@pytest.fixture(scope="module")
def model(blobs):
    model = build(blobs)
    assert model.load_dinotxt_state_dict(blobs[0]["state_dict"]) == ([], [])
    return model


def test_text(model, blobs):
    blob = blobs[0]
    ids, expected = blob["token_ids"], blob["outputs"]
    with torch.no_grad():
        assert_close(model.text.backbone(ids), expected["text_backbone_tokens"], **TOL)
        features = model.encode_text(ids)
    assert torch.equal(ids.argmax(-1), expected["text_eot_index"])
    assert_close(features, expected["text_features"], **TOL)
    assert_close(F.normalize(features, dim=-1), expected["text_features_normalized"], **TOL)
    assert_close(model.logit_scale.exp().detach(), expected["logit_scale_exp"], **TOL)


@pytest.mark.parametrize("name", IMAGES)
def test_image(model, blobs, name):
    blob, backbone_blob = blobs
    images, expected = backbone_blob["inputs"][name], blob["outputs"][name]
    with torch.no_grad():
        cls, storage, patches = model.backbone_tokens(images)
        head_cls, head_patches = model.head_tokens(images)
        features = model.image_features(images)
        logits = model.get_logits(images, blob["token_ids"])
    assert_close(cls, expected["backbone_class_token"], **TOL)
    assert_close(storage, expected["backbone_register_tokens"], **TOL)
    assert_close(patches, expected["backbone_patch_tokens"], **TOL)
    assert_close(head_cls, expected["head_class_token"], **TOL)
    assert_close(head_patches, expected["head_patch_tokens"], **TOL)
    assert_close(features, expected["image_features"], **TOL)
    assert_close(logits, expected["image_logits"], **TOL)


@pytest.mark.parametrize("use_head", [True, False])
def test_encode_image_grid(model, blobs, use_head):
    blob, backbone_blob = blobs
    images, expected = backbone_blob["inputs"]["img_nonsquare"], blob["outputs"]["img_nonsquare"]
    with torch.no_grad():
        cls, patches = model.encode_image(images, use_head=use_head)
    prefix = "head" if use_head else "backbone"
    assert patches.shape == (1, 192, 13, 20)
    assert_close(cls, expected[f"{prefix}_class_token"], **TOL)
    assert_close(patches.flatten(2).transpose(1, 2), expected[f"{prefix}_patch_tokens"], **TOL)


def test_loader_tolerates_missing_logit_scale(blobs):
    model = build(blobs)
    file_state = {k: v for k, v in blobs[0]["state_dict"].items() if k != "logit_scale"}
    result = model.load_dinotxt_state_dict(file_state)
    assert result.missing_keys == ["logit_scale"] and result.unexpected_keys == []


@pytest.mark.parametrize("change", ["drop_head_key", "extra_key"])
def test_loader_is_strict(blobs, change):
    file_state = dict(blobs[0]["state_dict"])
    if change == "drop_head_key":
        del file_state["visual_model.head.ln_final.weight"]
    else:
        file_state["text_model.head.ln_final.weight"] = torch.zeros(64)
    with pytest.raises(KeyError, match="ln_final"):
        build(blobs).load_dinotxt_state_dict(file_state)


def test_full_size_keys_and_shapes_match_release(parity_dir):
    manifest = json.loads(
        (parity_dir / "manifests" / "dinov3_vitl16_dinotxt_vision_head_and_text_encoder.json").read_text()
    )["keys"]
    with torch.device("meta"):
        model = dinov3_vitl16_dinotxt()
    to_file = {ours: theirs for theirs, ours in FILE_PREFIXES.items()}
    ours = {}
    for key, value in model.state_dict().items():
        if not key.startswith("backbone."):
            prefix = next(p for p in to_file if key.startswith(p))
            ours[to_file[prefix] + key[len(prefix) :]] = list(value.shape)
    assert ours == {k: v["shape"] for k, v in manifest.items()}
    assert model.vision_head.blocks[0].mlp.w1.out_features == 2752
    # the loader maps every released key (meta tensors: names and shapes only)
    file_state = {k: torch.empty(v["shape"], device="meta") for k, v in manifest.items()}
    assert model.load_dinotxt_state_dict(file_state) == ([], [])


def test_text_tower_stops_at_the_last_eot_without_changing_the_result():
    import torch

    from dinov3seg.modeling.encoders.dinotxt import DINOTxtTextTower
    from dinov3seg.modeling.encoders.tokenizer import build_tokenizer

    torch.manual_seed(0)
    tower = DINOTxtTextTower(width=32, heads=2, layers=2, output_dim=64).eval()
    ids = build_tokenizer()(["a cat", "a photo of a dog in the scene.", ""])
    with torch.no_grad():
        tokens = tower.backbone(ids)  # the full 77-token context
        full = tower.head["linear_projection"](tokens[torch.arange(3), ids.argmax(-1)])
        torch.testing.assert_close(tower(ids), full, rtol=1e-5, atol=1e-6)
