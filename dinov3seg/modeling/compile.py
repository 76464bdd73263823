"""Opt-in ``torch.compile`` of the parts where it pays (``MODEL.COMPILE``).

Compiled: AnyUp's image-resolution encoders (:meth:`AnyUp.encode_pixels`: 1x1 convs, GroupNorm, SiLU and
RoPE over 384 x 384 x 128 maps, memory-bound in eager mode, fused by the compiler). Left eager: the ViTs (DINOv3,
SAM) and the head, whose time is in large matmuls and attention kernels that compilation does not speed up,
and the head's Python-level class / pixel chunking (a recompile per vocabulary size). Weights and checkpoint
keys are unchanged (the module's bound method is replaced, not the module). The first call of each input
shape compiles (tens of seconds on a CPU); ``tools.benchmark --compile`` reports it apart from steady state.
"""
import logging
import os
import shutil
from typing import List

import torch
from torch import nn

logger = logging.getLogger(__name__)


def compiler_problem(device: torch.device) -> str:
    """Why ``torch.compile`` cannot build kernels for ``device`` ("" when it can)."""
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile (needs torch >= 2.0)"
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        return "" if has_triton() else "Triton is not installed (pip install triton), so no CUDA kernels can be built"
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    return "" if compiler else "no C++ compiler found (install g++ or clang++, or set $CXX)"


def compile_model(model: nn.Module) -> List[str]:
    """Compile the parts of a DINOv3Seg listed in the module doc, in place; returns their names.

    Raises RuntimeError with the reason and the fix when no compiler is available for the model's device.
    """
    problem = compiler_problem(model.device)
    if problem:
        raise RuntimeError(f"MODEL.COMPILE is True but torch.compile cannot run on {model.device}: {problem}. "
                           "Install the compiler or set MODEL.COMPILE False (eager mode, same results).")
    compiled = []
    if model.anyup is not None:
        model.anyup.encode_pixels = torch.compile(model.anyup.encode_pixels, dynamic=False)
        compiled.append("anyup.encode_pixels")
    logger.info(f"MODEL.COMPILE: torch.compile of {', '.join(compiled) or 'nothing'} (compiles on first use)")
    return compiled
