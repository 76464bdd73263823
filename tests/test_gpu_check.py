"""scripts/gpu_check.sh (and tools/gpu_check) on a machine without CUDA: says so, skips the CUDA parts, runs the
rest at tiny sizes and writes its JSON."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA behaviour")
def test_gpu_check_without_cuda(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(tmp_path), WHEELS=str(tmp_path / "no_wheels"))
    run = subprocess.run(["bash", "scripts/gpu_check.sh", "--tiny"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "no CUDA device, so the CUDA parts (ddp, cuda_tests) are skipped" in run.stdout
    r = json.loads((tmp_path / "gpu_check.json").read_text())
    assert r["environment"]["cuda"] is False
    assert r["ddp"] == {"status": "skipped", "reason": "no CUDA device"}
    assert r["cuda_tests"]["status"] == "skipped"
    rows = r["inference"]["rows"]
    assert r["inference"]["status"] == "ok" and sorted(rows) == ["3_bf16", "3_fp32"]
    assert all(row["seconds_per_image"] > 0 for row in rows.values())
    assert r["training"]["status"] == "ok" and r["training"]["seconds_per_iter"] > 0
    agreement = r["agreement"]  # random weights: near-tied logits, so no bound on the agreement here
    assert agreement["status"] == "ok" and 0 <= agreement["argmax_agreement"] <= 1
    assert 0 < agreement["max_abs_logit_diff"] < 1
    assert "inference 3 cls bf16" in run.stdout and "paper: 0.37 s/image" in run.stdout
