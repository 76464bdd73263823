"""CUDA-only checks (marker ``cuda``: skipped without a GPU; scripts/gpu_check.sh runs them on one)."""
from pathlib import Path

import pytest
import torch
from detectron2.modeling import build_model

import dinov3seg  # noqa: F401
from dinov3seg import get_dinov3seg_cfg

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.cuda


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = get_dinov3seg_cfg(str(REPO / "configs/quickstart.yaml"),
                            ["MODEL.DEVICE", "cuda", "MODEL.DINOV3SEG.PRECISION", "auto"])
    return build_model(cfg)


def test_auto_picks_bf16_on_a_bf16_gpu(model):
    picked, reason = model.picked_precision()
    assert picked == ("bf16" if torch.cuda.is_bf16_supported() else "fp32"), reason


def test_inference_on_cuda_with_cpu_inputs(model):
    model.eval()
    model.set_vocabulary(["red", "green", "blue"])
    with torch.no_grad():
        scores = model([{"image": torch.rand(3, 90, 120) * 255, "height": 90, "width": 120}])[0]["sem_seg"]
    assert scores.device.type == "cuda" and scores.dtype == torch.float32 and torch.isfinite(scores).all()


def test_training_step_on_cuda_in_bf16(model):
    model.train()
    batch = [{"image": torch.rand(3, 128, 128) * 255, "sem_seg": torch.randint(0, 3, (128, 128))} for _ in range(2)]
    loss = model(batch)["loss_sem_seg"]
    loss.backward()
    grads = [p.grad for p in model.sem_seg_head.parameters() if p.grad is not None]
    assert torch.isfinite(loss) and grads and all(g.device.type == "cuda" and g.dtype == torch.float32 for g in grads)
    model.zero_grad()
    model.eval()
