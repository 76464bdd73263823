"""train_net.py end to end on the quickstart config: train, evaluate, resume, eval-only, 2 processes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
FAST = ["SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0", "TEST.LGA.ENABLED", "False"]


def run(*args, cwd=REPO):
    env = dict(os.environ, DETECTRON2_DATASETS=os.environ.get("DETECTRON2_DATASETS", str(REPO / "datasets")))
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_train_then_evaluate_prints_miou(tmp_path):
    out = run("train_net.py", "--config-file", "configs/quickstart.yaml", "OUTPUT_DIR", str(tmp_path),
              "SOLVER.MAX_ITER", "2", *FAST)
    assert "mIoU seen" in out and "copypaste: mIoU" in out
    assert (tmp_path / "model_final.pth").is_file()
    saved = torch.load(tmp_path / "model_final.pth", weights_only=True)
    # No weight files in the quickstart: the random SAM encoder is stored, so evaluation rebuilds the same model.
    assert saved["iteration"] == 1 and any(k.startswith("sam.") for k in saved["model"])

    out = run("train_net.py", "--config-file", "configs/quickstart.yaml", "--eval-only", "OUTPUT_DIR",
              str(tmp_path / "eval"), "MODEL.WEIGHTS", str(tmp_path / "model_final.pth"), *FAST)
    results = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
    miou = results["synthetic_ov_sem_seg_val"]["sem_seg"]["mIoU"]
    assert 0 <= miou <= 100

    out = run("train_net.py", "--config-file", "configs/quickstart.yaml", "--resume", "OUTPUT_DIR", str(tmp_path),
              "SOLVER.MAX_ITER", "3", "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()", *FAST)
    assert "Resuming from" in out or "Loading from" in out
    assert torch.load(tmp_path / "model_final.pth", weights_only=True)["iteration"] == 2


def test_two_cpu_processes_train_the_same_weights(tmp_path):
    run(str(REPO / "tests" / "distributed_worker.py"), str(tmp_path))
    rank0 = torch.load(tmp_path / "rank0.pth", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pth", weights_only=True)
    assert rank0.keys() == rank1.keys() and len(rank0) > 10
    for key in rank0:
        torch.testing.assert_close(rank0[key], rank1[key], rtol=0, atol=0)


def test_quickstart_is_reproducible(tmp_path):
    """SEED fixes init, data order and the loader worker's crops / flips: two runs train the same weights."""
    for name in ("a", "b"):
        run("train_net.py", "--config-file", "configs/quickstart.yaml", "OUTPUT_DIR", str(tmp_path / name),
            "SOLVER.MAX_ITER", "3", "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "1", "DATASETS.TEST", "()")
    a, b = (torch.load(tmp_path / name / "model_final.pth", weights_only=True)["model"] for name in ("a", "b"))
    assert a.keys() == b.keys() and len(a) > 10
    assert all(torch.equal(a[k], b[k]) for k in a)
