"""Weight-file plumbing: clear errors naming the config key, file and URL; hash suffix; strict key reports."""
import builtins
import hashlib
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from dinov3seg.modeling.encoders.anyup import AnyUp
from dinov3seg.modeling.encoders.weights import (WEIGHT_SPECS, WeightFileError, hash_suffix, load_strict,
                                                 load_weight_file)

SPEC = dict(config_key="MODEL.TEST.WEIGHTS", expected_name="model-0123abcd.pth", request_url="https://example.org/get")


def save_with_hash(state: dict, folder, stem: str) -> tuple:
    """Save ``state`` and return (path named ``stem-<first 8 of sha256>.pth``, that prefix)."""
    tmp = folder / "tmp.pth"
    torch.save(state, tmp)
    prefix = hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]
    return tmp.rename(folder / f"{stem}-{prefix}.pth"), prefix


def test_missing_file_names_key_file_and_url(tmp_path):
    with pytest.raises(WeightFileError) as err:
        load_weight_file(str(tmp_path / "nope.pth"), **WEIGHT_SPECS["dinov3"])
    message = str(err.value)
    for text in ("MODEL.DINOV3.WEIGHTS", "dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth",
                 "https://ai.meta.com/resources/models-and-libraries/dinov3-downloads/"):
        assert text in message
    for name, url in (("anyup", "github.com/wimmerth/anyup"), ("sam_vit_l", "dl.fbaipublicfiles.com/segment_anything"),
                      ("dinotxt", "dinov3-downloads")):
        with pytest.raises(WeightFileError, match=WEIGHT_SPECS[name]["config_key"].replace(".", r"\.")) as err:
            load_weight_file("", **WEIGHT_SPECS[name])
        assert url in str(err.value)


def test_hash_suffix_convention(tmp_path):
    assert hash_suffix("dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth") == "8aa4cbdd"
    assert hash_suffix("sam_vit_l_0b3195.pth") is None and hash_suffix("anyup_paper.pth") is None
    path, prefix = save_with_hash({"w": torch.ones(2)}, tmp_path, "model")
    spec = dict(SPEC, expected_name=path.name)
    assert load_weight_file(str(path), **spec)["w"].sum() == 2  # suffix taken from the expected name
    with pytest.raises(WeightFileError, match=r"(?s)sha256.*starts with 0123abcd.*MODEL\.WEIGHT_HASH_CHECK warn"):
        load_weight_file(str(path), **SPEC)  # expected name says 0123abcd
    renamed = path.rename(tmp_path / "renamed.pth")
    with pytest.raises(WeightFileError, match="0123abcd"):
        load_weight_file(str(renamed), **SPEC)  # renaming does not bypass the check ...
    assert "w" in load_weight_file(str(renamed), **SPEC, check_hash=False)  # ... only the explicit option does
    assert "w" in load_weight_file(str(renamed), **SPEC, sha_prefix=prefix)


def test_hash_check_modes(tmp_path, monkeypatch, caplog):
    """MODEL.WEIGHT_HASH_CHECK: "error" refuses a mismatch, "warn" logs it and loads, "off" does not hash."""
    path, _ = save_with_hash({"w": torch.ones(2)}, tmp_path, "model")  # its sha256 does not start with 0123abcd
    with pytest.raises(WeightFileError, match=r"MODEL\.WEIGHT_HASH_CHECK"):
        load_weight_file(str(path), **SPEC, check_hash="error")
    with caplog.at_level("WARNING"):
        assert "w" in load_weight_file(str(path), **SPEC, check_hash="warn")
    assert "0123abcd" in caplog.text and "MODEL.WEIGHT_HASH_CHECK" in caplog.text
    monkeypatch.setattr("dinov3seg.modeling.encoders.weights.sha256_of", lambda p: pytest.fail("hashed with 'off'"))
    assert "w" in load_weight_file(str(path), **SPEC, check_hash="off")
    with pytest.raises(ValueError, match="MODEL.WEIGHT_HASH_CHECK must be one of"):
        load_weight_file(str(path), **SPEC, check_hash="sometimes")


def test_hash_check_config_key_reaches_the_dinov3_loaders(tmp_path, caplog):
    """A re-saved DINOv3 file (right keys and shapes, other bytes) loads by default, with a warning."""
    from dinov3seg import get_dinov3seg_cfg
    from dinov3seg.modeling.encoders import build_dinotxt
    from dinov3seg.modeling.encoders.dinov3 import DINOv3ViT

    cfg = get_dinov3seg_cfg(str(Path(__file__).resolve().parents[1] / "configs/quickstart.yaml"))
    assert cfg.MODEL.WEIGHT_HASH_CHECK == "warn"
    d = cfg.MODEL.DINOV3
    torch.manual_seed(0)
    source = DINOv3ViT(embed_dim=d.EMBED_DIM, depth=d.DEPTH, num_heads=d.NUM_HEADS)
    path = tmp_path / "dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth"  # the released name, re-saved bytes
    torch.save(source.state_dict(), path)
    cfg.MODEL.DINOV3.WEIGHTS = str(path)
    with caplog.at_level("WARNING"):
        model = build_dinotxt(cfg)
    assert "8aa4cbdd" in caplog.text
    torch.testing.assert_close(model.backbone.state_dict(), source.state_dict())
    cfg.MODEL.WEIGHT_HASH_CHECK = "error"
    with pytest.raises(WeightFileError, match=r"(?s)MODEL\.DINOV3\.WEIGHTS.*MODEL\.WEIGHT_HASH_CHECK"):
        build_dinotxt(cfg)


def test_unreadable_and_wrong_files(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightFileError, match=r"(?s)MODEL\.TEST\.WEIGHTS.*cannot read.*https://example.org/get"):
        load_weight_file(str(garbage), **SPEC, check_hash=False)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"model": {"w": torch.ones(1)}}, wrapped)
    with pytest.raises(WeightFileError, match="not a flat"):
        load_weight_file(str(wrapped), **SPEC, check_hash=False)
    other = tmp_path / "other.pth"
    torch.save({"cls_token": torch.zeros(1)}, other)
    with pytest.raises(WeightFileError, match=r"(?s)does not look like anyup.*rope\.freqs.*MODEL\.ANYUP\.WEIGHTS"):
        load_weight_file(str(other), **WEIGHT_SPECS["anyup"])


def test_weights_only_refuses_pickled_code(tmp_path):
    class Payload:
        def __reduce__(self):
            return (exec, ("import builtins; builtins.DINOV3SEG_PAYLOAD_RAN = True",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"w": Payload()}, f, protocol=2)
    with pytest.raises(WeightFileError, match="cannot read"):
        load_weight_file(str(path), **SPEC, check_hash=False)
    assert not hasattr(builtins, "DINOV3SEG_PAYLOAD_RAN")


def test_load_strict_reports_all_problems():
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    state = {"0.weight": torch.zeros(3, 2), "0.bias": torch.zeros(4), "extra": torch.zeros(1),
             "head.dropped": torch.zeros(1)}
    with pytest.raises(RuntimeError) as err:
        load_strict(model, state, dropped_prefixes=("head.",), component="toy")
    message = str(err.value)
    assert "toy" in message and "missing (2): 1.bias, 1.weight" in message
    assert "unexpected (1): extra" in message and "0.bias: file (4,) vs model (3,)" in message
    state = {k: torch.full_like(v, 1.0) for k, v in model.state_dict().items()} | {"head.x": torch.zeros(1)}
    assert load_strict(model, state, dropped_prefixes=("head.",)) == ["head.x"]
    assert model[0].weight.sum() == 6


def test_anyup_load_weights_round_trip(tmp_path):
    source = AnyUp()
    path = tmp_path / "anyup_multi_backbone.pth"
    torch.save(source.state_dict(), path)
    target = AnyUp().load_weights(str(path))
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))
    assert AnyUp().load_weights("") is not None  # empty path: random init
