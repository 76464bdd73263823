"""Checkpoints that hold only what training changes.

The frozen encoders (hundreds of millions of parameters) are rebuilt from their own weight files
(MODEL.*.WEIGHTS), so a dinov3.seg checkpoint stores the head and any tuned encoder parameters.
Loading is strict on exactly those keys and always uses ``weights_only=True``.
"""
import os

import torch
from detectron2.checkpoint import DetectionCheckpointer

# Version of what a checkpoint's "model" holds; bump it when saved parameters change meaning.
# 1 (no "format" key): the head before CAT-Seg parity (issue 10). 2: the head computes CAT-Seg's Aggregator.
CHECKPOINT_FORMAT = 2


class DINOv3SegCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer that saves ``model.trainable_state_dict()`` and loads it strictly."""

    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.trainable_state_dict(), "format": CHECKPOINT_FORMAT}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(kwargs)
        path = os.path.join(self.save_dir, f"{name}.pth")
        self.logger.info(f"Saving checkpoint to {path}")
        with self.path_manager.open(path, "wb") as f:
            torch.save(data, f)
        self.tag_last_checkpoint(os.path.basename(path))

    def _load_file(self, filename: str):
        if not filename.endswith(".pth"):
            raise ValueError(f"dinov3seg checkpoints are .pth files saved by training; got '{filename}'")
        with self.path_manager.open(filename, "rb") as f:
            return torch.load(f, map_location="cpu", weights_only=True)

    def _load_model(self, checkpoint):
        found = checkpoint.get("format", 1)
        if found != CHECKPOINT_FORMAT:
            raise ValueError(
                f"this checkpoint was saved by an older dinov3seg (checkpoint format {found}, this version reads "
                f"{CHECKPOINT_FORMAT}): its head predates the CAT-Seg head (class-axis padding, pooled class "
                "attention, new decoder guidance) and its weights cannot be loaded into the current head. "
                "Retrain with this version, or evaluate it with the dinov3seg version that trained it.")
        state = checkpoint["model"]
        expected = set(self.model.trainable_state_dict())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise KeyError(
                "checkpoint does not match this model's trainable parameters (were the config's head / "
                f"TEXT_FINETUNE settings the same as in training?)\n  missing ({len(missing)}): {missing[:10]}\n"
                f"  unexpected ({len(unexpected)}): {unexpected[:10]}")
        own = self.model.state_dict()
        shapes = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items() if v.shape != own[k].shape]
        if shapes:
            raise ValueError(f"checkpoint shapes differ from the model: {shapes[:10]}")
        self.model.load_state_dict(state, strict=False)
