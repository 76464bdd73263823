"""Tensors follow their inputs' device in the train and test paths, checked on the CPU (see device_guard.py)."""
from pathlib import Path

import pytest
import torch
from detectron2.modeling import build_model

import dinov3seg  # noqa: F401
from dinov3seg import get_dinov3seg_cfg
from dinov3seg.modeling.encoders import anyup

from device_guard import DevicePlacementError, DevicePlacementGuard

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = get_dinov3seg_cfg(str(REPO / "configs/quickstart.yaml"), ["TEST.LGA.CANVAS", "160", "TEST.LGA.STRIDE", "32"])
    return build_model(cfg)


def infer(model, image, pad_len):
    model.eval()
    for part in (model.sem_seg_head, *model.sem_seg_head.classes):  # the head's one class-axis length
        part.pad_len = pad_len
    model.set_vocabulary(["red", "green", "blue, navy"])
    with torch.no_grad():
        return model([{"image": image, "height": 90, "width": 120}])[0]["sem_seg"]


def test_inference_follows_the_input_device(model):
    image = torch.rand(3, 90, 120) * 255
    for pad_len in (12, 2):  # padded class axis, and the per-view top-k pruning of large vocabularies
        model.text_embedder.clear_cache()
        with DevicePlacementGuard(model):
            scores = infer(model, image, pad_len)
        assert scores.device.type == "cpu" and scores.shape == (3, 90, 120)


def test_training_step_follows_the_input_device(model):
    model.train()
    g = torch.Generator().manual_seed(0)
    batch = [{"image": torch.randint(0, 256, (3, 128, 128), generator=g).float(),
              "sem_seg": torch.randint(0, 4, (128, 128), generator=g)} for _ in range(2)]
    batch[1]["sem_seg"][:10] = 255  # ignore pixels
    with DevicePlacementGuard(model):
        loss = model(batch)["loss_sem_seg"]
        loss.backward()
    assert torch.isfinite(loss)
    model.zero_grad()


def test_guard_catches_a_planted_bug(model, monkeypatch):
    """A window_bounds that forgets its device argument (torch.arange on the default device) is caught."""
    original = anyup.window_bounds
    monkeypatch.setattr(anyup, "window_bounds", lambda out_len, in_len, ratio, device=None:
                        original(out_len, in_len, ratio))
    image = torch.rand(3, 90, 120) * 255
    with pytest.raises(DevicePlacementError, match="default device"):
        with DevicePlacementGuard(model):
            infer(model, image, 12)
