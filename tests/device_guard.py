"""A CPU-only check that tensors follow their inputs' device (a CUDA run would otherwise be the first to see).

While :class:`DevicePlacementGuard` is active, every tensor factory that names no device (``torch.zeros(n)``,
``torch.arange(n)``, ``torch.tensor(rows)``, ...) creates its tensor on the ``meta`` device instead of the CPU,
and every op that produces a meta tensor is recorded. On a CUDA machine such a factory would put its tensor on
the CPU while the inputs are on the GPU; here the model runs on the CPU, so any such tensor shows up as a meta
tensor (or as a "found two devices" error where it meets an input). Strings -> token ids is CPU work by nature:
the tokenizer runs with the CPU as its default device, and so do the library functions in ALLOWED.
"""
import importlib
import traceback
from typing import List

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


# Library functions that make tensors on the default device on purpose, run with the CPU as default device:
# segment_anything's get_rel_pos builds CPU integer index tensors (legal on CUDA: advanced indexing takes CPU
# indices); Detectron2's ImageList.from_tensors computes the padded size from CPU size tensors.
ALLOWED = (("segment_anything.modeling.image_encoder", "get_rel_pos"),
           ("detectron2.structures.image_list", "ImageList.from_tensors"))


def _on_cpu(fn):
    def wrapped(*args, **kwargs):
        with torch.device("cpu"):
            return fn(*args, **kwargs)
    return wrapped


class DevicePlacementError(AssertionError):
    pass


class _MetaRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.found: List[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(isinstance(t, torch.Tensor) and t.device.type == "meta" for t in tree_leaves(out)):
            frames = [f for f in traceback.extract_stack()[:-1] if "/dinov3seg/" in f.filename]
            where = f"{frames[-1].filename.split('/dinov3seg/')[-1]}:{frames[-1].lineno}" if frames else "?"
            self.found.append(f"{func} at dinov3seg/{where}")
        return out


class DevicePlacementGuard:
    """``with DevicePlacementGuard(model): model(inputs)``; raises DevicePlacementError naming the ops (and our
    source lines) that made tensors on the default device instead of the inputs' device."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def __enter__(self):
        self._restore = [(self.model.text_embedder, "tokenizer", self.model.text_embedder.tokenizer)]
        for module_name, path in ALLOWED:
            owner = importlib.import_module(module_name)
            *parents, name = path.split(".")
            for parent in parents:
                owner = getattr(owner, parent)
            self._restore.append((owner, name, owner.__dict__[name]))
        for owner, name, original in self._restore:
            fn = original.__func__ if isinstance(original, staticmethod) else original
            setattr(owner, name, staticmethod(_on_cpu(fn)) if isinstance(original, staticmethod) else _on_cpu(fn))
        self._default = torch.device("meta")
        self._recorder = _MetaRecorder()
        self._default.__enter__()
        self._recorder.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb):
        self._recorder.__exit__(None, None, None)
        self._default.__exit__(None, None, None)
        for owner, name, original in self._restore:
            setattr(owner, name, original)
        found = sorted(set(self._recorder.found))
        if exc_type is not None and "meta" in str(exc):
            raise DevicePlacementError(f"a tensor was made on the default device, not the inputs': {exc}; "
                                       f"meta-producing ops: {found}") from exc
        if exc_type is None and found:
            raise DevicePlacementError(f"tensors made on the default device, not the inputs': {found}")
        return False
