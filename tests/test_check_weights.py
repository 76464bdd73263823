"""tools/check_weights: clear per-key errors, and a real (tiny) checkpoint written here loads OK."""
import torch

from dinov3seg.modeling.encoders.anyup import AnyUp
from dinov3seg.modeling.encoders.dinov3 import DINOv3ViT
from dinov3seg.tools import check_weights as cw
from dinov3seg.config import get_dinov3seg_cfg as setup_cfg

EMPTY = ["MODEL.DINOV3.WEIGHTS", "", "MODEL.DINOTXT.WEIGHTS", "", "MODEL.ANYUP.WEIGHTS", "", "MODEL.SAM.WEIGHTS", ""]


def _results(opts):
    return {r.key: r for r in cw.check_weights(setup_cfg("configs/quickstart.yaml", EMPTY + opts))}


def test_missing_file_names_the_key(tmp_path, capsys):
    missing = str(tmp_path / "nowhere" / "anyup_multi_backbone.pth")
    results = _results(["MODEL.ANYUP.WEIGHTS", missing])
    r = results["MODEL.ANYUP.WEIGHTS"]
    assert r.status == "FAIL" and not r.exists
    assert "MODEL.ANYUP.WEIGHTS" in r.message and "does not exist" in r.message
    assert "anyup_multi_backbone.pth" in r.message and "github.com/wimmerth/anyup" in r.message
    assert {results[k].status for k in results if k != "MODEL.ANYUP.WEIGHTS"} == {"SKIP"}
    # The command line: every component printed, exit status 1.
    code = cw.main(["--config-file", "configs/quickstart.yaml", "--opts", *EMPTY, "MODEL.ANYUP.WEIGHTS", missing])
    out = capsys.readouterr().out
    assert code == 1
    assert "[FAIL] MODEL.ANYUP.WEIGHTS" in out and "[SKIP] MODEL.SAM.WEIGHTS" in out


def test_tiny_checkpoint_loads_ok(tmp_path, capsys):
    path = tmp_path / "anyup_tiny.pth"
    torch.save(AnyUp(qk_dim=16).state_dict(), path)  # quickstart's AnyUp width
    r = _results(["MODEL.ANYUP.WEIGHTS", str(path)])["MODEL.ANYUP.WEIGHTS"]
    assert r.status == "OK", r.message
    assert r.exists and "loaded strictly" in r.message
    assert cw.main(["--config-file", "configs/quickstart.yaml", "--opts", *EMPTY,
                    "MODEL.ANYUP.WEIGHTS", str(path)]) == 0
    assert "[OK] MODEL.ANYUP.WEIGHTS" in capsys.readouterr().out


def test_wrong_shapes_fail_with_the_component(tmp_path):
    path = tmp_path / "anyup_wide.pth"
    torch.save(AnyUp(qk_dim=32).state_dict(), path)  # quickstart expects qk_dim 16
    r = _results(["MODEL.ANYUP.WEIGHTS", str(path)])["MODEL.ANYUP.WEIGHTS"]
    assert r.status == "FAIL" and "AnyUp" in r.message and "shape mismatch" in r.message


def test_dinov3_hash_check_follows_the_config_key_and_the_flag(tmp_path, capsys):
    """MODEL.WEIGHT_HASH_CHECK decides what a mismatch does (error: FAIL, warn: WARN and loads, off: no hash);
    --no-hash-check is off whatever the config says."""
    backbone = DINOv3ViT(embed_dim=64, depth=2, num_heads=2)  # quickstart's backbone
    path = tmp_path / "dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth"
    torch.save(backbone.state_dict(), path)  # the released name, other bytes

    def result(mode, check_hash=True):
        opts = EMPTY + ["MODEL.DINOV3.WEIGHTS", str(path), "MODEL.WEIGHT_HASH_CHECK", mode]
        return {r.key: r for r in cw.check_weights(setup_cfg("configs/quickstart.yaml", opts),
                                                   check_hash=check_hash)}["MODEL.DINOV3.WEIGHTS"]

    r = result("error")
    assert r.status == "FAIL" and r.hash.startswith("MISMATCH")
    assert "MODEL.DINOV3.WEIGHTS" in r.message and "8aa4cbdd" in r.message
    r = result("warn")
    assert r.status == "WARN" and r.hash.startswith("MISMATCH") and "loaded strictly" in r.message, r.message
    assert r.layout == "torch .pth, Meta keys" and r.size == path.stat().st_size
    r = result("off")
    assert r.status == "OK" and r.hash.startswith("skipped"), r.message
    r = result("error", check_hash=False)  # --no-hash-check wins over the config's "error"
    assert r.status == "OK" and r.hash.startswith("skipped"), r.message
    opts = [*EMPTY, "MODEL.DINOV3.WEIGHTS", str(path), "MODEL.WEIGHT_HASH_CHECK", "error"]
    assert cw.main(["--config-file", "configs/quickstart.yaml", "--opts", *opts]) == 1
    assert cw.main(["--config-file", "configs/quickstart.yaml", "--no-hash-check", "--opts", *opts]) == 0
    out = capsys.readouterr().out
    assert "[FAIL] MODEL.DINOV3.WEIGHTS" in out and "[OK] MODEL.DINOV3.WEIGHTS" in out
    assert "skipped (MODEL.WEIGHT_HASH_CHECK off)" in out


def test_sam_custom_checkpoint_loads_ok(tmp_path):
    cfg = setup_cfg("configs/quickstart.yaml", EMPTY)
    sam = cw._sam_encoder(cfg)
    path = tmp_path / "sam_tiny.pth"
    torch.save(sam.state_dict(), path)  # already has the image_encoder.* names of a SAM file
    r = _results(["MODEL.SAM.WEIGHTS", str(path)])["MODEL.SAM.WEIGHTS"]
    assert r.status == "OK", r.message
