"""Optimizer: AdamW with parameter groups and full-model gradient clipping."""
import itertools
from typing import List

import torch
from torch import nn

NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d, nn.SyncBatchNorm, nn.RMSNorm)
EMBEDDING_NAMES = ("token_embedding", "positional_embedding", "pos_embed", "cls_token", "storage_tokens")


def param_groups(model: nn.Module, cfg) -> List[dict]:
    """One group per trainable parameter with its LR and weight decay.

    Encoder parameters (under ``model.ENCODERS`` prefixes, e.g. a tuned text tower) use
    ``BASE_LR * SOLVER.ENCODER_LR_MULTIPLIER``; norms get ``WEIGHT_DECAY_NORM`` and embeddings
    ``WEIGHT_DECAY_EMBED``.
    """
    s = cfg.SOLVER
    encoder_prefixes = tuple(f"{m}." for m in getattr(model, "ENCODERS", ()))
    groups, seen = [], set()
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or param in seen:
                continue
            seen.add(param)
            full = f"{module_name}.{name}" if module_name else name
            lr, decay = s.BASE_LR, s.WEIGHT_DECAY
            if full.startswith(encoder_prefixes):
                lr *= s.ENCODER_LR_MULTIPLIER
            if isinstance(module, NORM_TYPES):
                decay = s.WEIGHT_DECAY_NORM
            elif isinstance(module, nn.Embedding) or any(e in full for e in EMBEDDING_NAMES):
                decay = s.WEIGHT_DECAY_EMBED
            groups.append({"params": [param], "lr": lr, "weight_decay": decay})
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return groups


def with_full_model_clipping(optimizer_cls, max_norm: float):
    """A subclass of ``optimizer_cls`` that clips the gradient norm of all its parameters together
    to ``max_norm`` before each step."""

    class FullModelClipping(optimizer_cls):
        def step(self, closure=None):
            params = itertools.chain.from_iterable(g["params"] for g in self.param_groups)
            torch.nn.utils.clip_grad_norm_(params, max_norm)
            return super().step(closure=closure)

    FullModelClipping.__name__ = f"{optimizer_cls.__name__}FullModelClipping"
    return FullModelClipping


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """AdamW (or SGD) over ``param_groups``; with SOLVER.CLIP_GRADIENTS.CLIP_TYPE "full_model", the
    gradient norm of all parameters together is clipped to CLIP_VALUE before each step."""
    s = cfg.SOLVER
    kinds = {"ADAMW": (torch.optim.AdamW, {}), "SGD": (torch.optim.SGD, {"momentum": s.MOMENTUM})}
    if s.OPTIMIZER not in kinds:
        raise ValueError(f"SOLVER.OPTIMIZER must be one of {sorted(kinds)}, got {s.OPTIMIZER!r}")
    optimizer_cls, extra = kinds[s.OPTIMIZER]
    clip = s.CLIP_GRADIENTS
    if clip.ENABLED:
        if clip.CLIP_TYPE != "full_model":
            raise ValueError(f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE must be 'full_model' for dinov3seg, "
                             f"got {clip.CLIP_TYPE!r}")
        optimizer_cls = with_full_model_clipping(optimizer_cls, clip.CLIP_VALUE)
    return optimizer_cls(param_groups(model, cfg), s.BASE_LR, **extra)
