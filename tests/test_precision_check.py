"""tools.precision_check: bf16 vs fp32 mIoU and argmax agreement on a checkpoint (one synthetic image here)."""
import json
from pathlib import Path

import torch
from detectron2.modeling import build_model
from detectron2.utils.env import seed_all_rng

from dinov3seg import get_dinov3seg_cfg
from dinov3seg.checkpoint import DINOv3SegCheckpointer
from dinov3seg.tools import precision_check

REPO = Path(__file__).resolve().parents[1]


def test_reports_both_precisions_and_gates_on_the_miou_delta(tmp_path, capsys):
    config = str(REPO / "configs/quickstart.yaml")
    seed_all_rng(3)
    DINOv3SegCheckpointer(build_model(get_dinov3seg_cfg(config)), save_dir=str(tmp_path)).save("model")
    args = ["--config-file", config, "--weights", str(tmp_path / "model.pth"), "--seed", "3", "--limit", "1",
            "--opts", "TEST.LGA.ENABLED", "False"]
    out = tmp_path / "r.json"
    assert precision_check.main(args[:-3] + ["--max-miou-delta", "100", "--json", str(out)] + args[-3:]) == 0
    r = json.loads(out.read_text())
    assert r["images"] == 1 and r["labelled_pixels"] > 0 and 0 <= r["argmax_agreement"] <= 1
    assert r["miou_delta"] == r["miou_bf16"] - r["miou_fp32"] and r["max_abs_score_diff"] < 1
    assert "per-pixel argmax agreement" in capsys.readouterr().out
    assert precision_check.main(args[:-3] + ["--max-miou-delta", "-1"] + args[-3:]) == 1  # |delta| can never be <= -1
    assert torch.get_default_dtype() == torch.float32
