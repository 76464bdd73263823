"""Checkpoints that hold only what training changes.

The frozen encoders (hundreds of millions of parameters) are rebuilt from their own weight files
(MODEL.*.WEIGHTS), so a dinov3.seg checkpoint stores the head and any tuned encoder parameters.
Loading is strict on exactly those keys and always uses ``weights_only=True``; a missing, truncated or
foreign file is reported naming where it came from (``MODEL.WEIGHTS`` or ``--resume``) and the file.

Writes are atomic: a checkpoint (and the ``last_checkpoint`` tag) is written to a temporary file in the
same directory, flushed to disk and renamed over the target, so a kill during a save leaves the previous
files intact and ``last_checkpoint`` never names a partial file.
"""
import os
from contextlib import contextmanager

import torch
from detectron2.checkpoint import DetectionCheckpointer

from .errors import mark_input_error
from .modeling.encoders.weights import WeightFileError

# Version of what a checkpoint's "model" holds; bump it when saved parameters change meaning.
# 1 (no "format" key): the head before CAT-Seg parity (issue 10). 2: the head computes CAT-Seg's Aggregator.
CHECKPOINT_FORMAT = 2
SAFETENSORS_FORMAT_KEY = "dinov3seg_checkpoint_format"  # CHECKPOINT_FORMAT in a .safetensors export's metadata


@contextmanager
def atomic_write(path: str, mode: str = "wb"):
    """Open a temporary file beside ``path``; on success flush, fsync and rename it to ``path``."""
    tmp = os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def read_trained_safetensors(filename: str) -> dict:
    """A ``.safetensors`` export of a training checkpoint's ``model`` (``convert_weights`` writes it with
    ``dinov3seg_checkpoint_format`` in its metadata) as the checkpoint dict ``_load_model`` takes."""
    from safetensors import safe_open

    with safe_open(filename, framework="pt", device="cpu") as f:
        metadata = f.metadata() or {}
        model = {key: f.get_tensor(key) for key in f.keys()}
    if SAFETENSORS_FORMAT_KEY in metadata:
        return {"model": model, "format": int(metadata[SAFETENSORS_FORMAT_KEY])}
    return {"model": model, "format": CHECKPOINT_FORMAT}  # no version stamp: the strict key and shape checks decide


class DINOv3SegCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer that saves ``model.trainable_state_dict()`` atomically and loads it strictly."""

    source = "MODEL.WEIGHTS"  # where the file being loaded was named, for error messages

    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.trainable_state_dict(), "format": CHECKPOINT_FORMAT}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(kwargs)
        path = os.path.join(self.save_dir, f"{name}.pth")
        self.logger.info(f"Saving checkpoint to {path}")
        with atomic_write(path) as f:
            torch.save(data, f)
        self.tag_last_checkpoint(os.path.basename(path))

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        with atomic_write(os.path.join(self.save_dir, "last_checkpoint"), "w") as f:
            f.write(last_filename_basename)

    def resume_or_load(self, path: str, *, resume: bool = True):
        resuming = resume and self.has_checkpoint()
        self.source = f"--resume (last_checkpoint in {self.save_dir})" if resuming else "MODEL.WEIGHTS"
        return super().resume_or_load(path, resume=resume)

    def load(self, path: str, *args, **kwargs):
        if path and "://" not in path and not os.path.isfile(path):
            raise WeightFileError(f"{self.source}: checkpoint '{path}' does not exist. Give the path of a "
                                  "model_*.pth that train_net.py wrote (OUTPUT_DIR), or '' for an untrained head.")
        try:
            return super().load(path, *args, **kwargs)
        except (KeyError, ValueError) as err:  # the checkpoint does not fit this model / optimizer
            raise mark_input_error(err, f"{self.source} '{path}'")

    def _load_file(self, filename: str):
        if not filename.endswith((".pth", ".safetensors")):
            raise WeightFileError(f"{self.source}: dinov3seg checkpoints are .pth files saved by training (or their "
                                  f".safetensors export, python -m dinov3seg.tools.convert_weights); got '{filename}'")
        try:
            if filename.endswith(".safetensors"):
                return read_trained_safetensors(filename)
            with self.path_manager.open(filename, "rb") as f:  # small (trainable parameters only): read, not mapped
                data = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as err:  # zip, unpickling and I/O errors all mean "not a usable checkpoint"
            fix = ("copy it again, or name an earlier model_*.pth in that last_checkpoint file"
                   if self.source.startswith("--resume") else "copy it again, or set MODEL.WEIGHTS to another file")
            raise WeightFileError(
                f"{self.source}: cannot read '{filename}' as a checkpoint ({str(err).split('. ')[0]}). The file "
                f"is truncated or corrupt (an interrupted copy or download?): {fix}.") from err
        if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
            found = sorted(data)[:6] if isinstance(data, dict) else type(data).__name__
            raise WeightFileError(
                f"{self.source}: '{filename}' is not a dinov3seg training checkpoint (no 'model' entry; found "
                f"{found}). Encoder weight files go in MODEL.DINOV3 / DINOTXT / ANYUP / SAM .WEIGHTS.")
        return data

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
        random_parts = tuple(f"{m}." for m in getattr(self.model, "random_init_encoders", list)())
        tuned = {n for n, p in self.model.named_parameters() if p.requires_grad}
        frozen_random = {k for k in expected if random_parts and k.startswith(random_parts) and k not in tuned}
        if missing and frozen_random.isdisjoint(state) and set(missing) <= frozen_random:
            raise KeyError(
                f"checkpoint lacks the randomly initialised encoder parts of this model ({len(missing)} tensors under "
                f"{sorted({k.split('.')[0] + '.' + k.split('.')[1] for k in missing})[:6]}): it was saved by an "
                "older dinov3seg, which did not store encoders built without a weight file, so they cannot be "
                "rebuilt as trained. Retrain it (e.g. the quickstart) with this version, or set the encoder "
                "WEIGHTS keys to the files it was trained with.")
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
