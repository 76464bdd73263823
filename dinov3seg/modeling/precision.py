"""Numeric precision of a run (``MODEL.DINOV3SEG.PRECISION``): which autocast the model runs under, and why.

``auto`` picks bf16 autocast where bf16 matrix products are fast and fp32 elsewhere:

- CUDA: bf16 when ``torch.cuda.is_bf16_supported()`` (Ampere and newer), else fp32;
- CPU: bf16 when the processor has AMX-BF16 or AVX512-BF16 (``amx_bf16`` / ``avx512_bf16`` in
  /proc/cpuinfo; torch's own probe where there is no /proc/cpuinfo). Without them torch's bf16 matmul has no
  fast kernel (on an AVX2-only EPYC it ran 300x slower than fp32), so bf16 would be a trap.

``fp32`` and ``bf16`` force the choice. Parts that need fp32 for accuracy stay fp32 under bf16 autocast, by
design: every LayerNorm / GroupNorm / RMSNorm (:func:`keep_norms_fp32`; the norms that only feed bf16 products
compute in fp32 and store bf16, :func:`norm_in_input_dtype`), the softmax of AnyUp's attention and
feature unification, RoPE angles and sin/cos (DINOv3 and AnyUp), the cost volume's L2 normalisation and the
LGA stitching, each marked where it happens. Softmax inside SDPA accumulates in fp32 in every kernel.
"""
import contextlib
import functools
import logging
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .cpu_memory import reuse_freed_cpu_memory

PRECISIONS = ("auto", "fp32", "bf16")
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
logger = logging.getLogger(__name__)


def check_precision(setting: str) -> str:
    """Validate a ``MODEL.DINOV3SEG.PRECISION`` value."""
    if setting not in PRECISIONS:
        raise ValueError(f"MODEL.DINOV3SEG.PRECISION must be one of {PRECISIONS}, got {setting!r}: 'auto' picks "
                         "bf16 where the hardware has fast bf16, 'fp32' / 'bf16' force one.")
    return setting


def _cpuinfo_flags() -> Optional[set]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


@functools.lru_cache(maxsize=None)
def cpu_fast_bf16() -> Tuple[bool, str]:
    """(whether this CPU has fast bf16 matrix units, the evidence)."""
    flags = _cpuinfo_flags()
    if flags is not None:
        found = [f for f in CPU_BF16_FLAGS if f in flags]
        if found:
            return True, f"CPU has {' and '.join(found)} (/proc/cpuinfo)"
        return False, "CPU lacks AMX-BF16 and AVX512-BF16 (/proc/cpuinfo), so bf16 matmuls are slow"
    probes = {"AMX": getattr(torch.cpu, "_is_amx_tile_supported", None),
              "AVX512-BF16": getattr(torch.cpu, "_is_avx512_bf16_supported", None)}
    found = [name for name, probe in probes.items() if probe is not None and probe()]
    if found:
        return True, f"CPU has {' and '.join(found)} (torch.cpu probe)"
    return False, "no AMX or AVX512-BF16 found by torch's CPU probe, so bf16 matmuls are slow"


def resolve_precision(setting: str, device: torch.device) -> Tuple[str, str]:
    """("bf16" | "fp32", reason) for ``MODEL.DINOV3SEG.PRECISION = setting`` on ``device``."""
    check_precision(setting)
    if setting != "auto":
        return setting, f"MODEL.DINOV3SEG.PRECISION={setting} (forced)"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", f"auto: {torch.cuda.get_device_name(device)} supports bf16"
        return "fp32", f"auto: {torch.cuda.get_device_name(device)} has no bf16 support"
    if device.type == "cpu":
        fast, why = cpu_fast_bf16()
        return ("bf16" if fast else "fp32"), f"auto: {why}"
    return "fp32", f"auto: no bf16 rule for device type {device.type!r}"


def autocast(device: torch.device, precision: str):
    """bf16 autocast on ``device`` for precision "bf16", else a no-op context."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def fp32_region(device: torch.device):
    """Autocast switched off: the ops inside run in the dtype of their (fp32) inputs. A no-op context on device
    types without autocast (``meta``, used by the device-placement check of the tests)."""
    if not torch.amp.is_autocast_available(device.type):
        return contextlib.nullcontext()
    return torch.autocast(device.type, enabled=False)


class FollowsPrecision:
    """For the meta-architectures (``nn.Module`` subclasses with a ``device``): ``_init_precision`` in
    ``__init__``, then ``picked_precision()`` resolves the setting per device type (logged once; the first CPU
    run also sets the CPU allocator, :mod:`.cpu_memory`) and ``_autocast()`` runs under it."""

    def _init_precision(self, precision: str, reuse_freed_cpu_memory: bool = True) -> None:
        """Take a ``MODEL.DINOV3SEG.PRECISION`` value; the model's norms then run in fp32 under bf16 autocast.
        ``reuse_freed_cpu_memory`` (``MODEL.REUSE_FREED_CPU_MEMORY``): the first run on CPU sets the process's
        allocator to keep freed buffers (:mod:`.cpu_memory`)."""
        self.precision = check_precision(precision)
        self.reuse_freed_cpu_memory = reuse_freed_cpu_memory
        self._picked_precision: Dict[str, Tuple[str, str]] = {}  # device type -> (precision, reason)
        keep_norms_fp32(self)

    def picked_precision(self) -> Tuple[str, str]:
        """("bf16" | "fp32", reason) that the setting gives on the model's current device."""
        device = self.device
        if device.type not in self._picked_precision:
            picked, reason = resolve_precision(self.precision, device)
            logger.info(f"dinov3seg runs in {picked} on {device.type}: {reason}")
            if device.type == "cpu" and self.reuse_freed_cpu_memory:
                reuse_freed_cpu_memory()
            self._picked_precision[device.type] = (picked, reason)
        return self._picked_precision[device.type]

    def _autocast(self):
        return autocast(self.device, self.picked_precision()[0])


def norm_in_input_dtype(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)`` for a LayerNorm / GroupNorm, with fp32 statistics and normalisation, returned in the dtype of ``x``.

    For norms whose every consumer is a matrix product (the head, the decoder, AnyUp's encoders). Under CPU bf16
    autocast their inputs are bf16 and the product reads bf16: the CPU kernels normalise in fp32 and round once to
    bf16, which is what the product would read from the fp32 norm of :func:`keep_norms_fp32` (the same values, to
    rounding), without casting the map to fp32 and back. CUDA autocast runs these norms in fp32 itself. Bypasses
    the module's hooks.
    """
    if isinstance(norm, nn.GroupNorm):
        return F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def _to_fp32(module: nn.Module, args: tuple) -> tuple:
    return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


def _norm_types() -> tuple:
    from segment_anything.modeling.common import LayerNorm2d

    return (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, LayerNorm2d)


@contextlib.contextmanager
def norms_fp32_everywhere():
    """While active, every norm layer of any module takes fp32 inputs (as :func:`keep_norms_fp32` does for one
    model): for code that builds its modules itself (``tools.verify_parity --precision bf16``)."""
    norms = _norm_types()

    def hook(module, args):
        return _to_fp32(module, args) if isinstance(module, norms) else None

    handle = nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def keep_norms_fp32(model: nn.Module) -> int:
    """Make every LayerNorm / GroupNorm / RMSNorm of ``model`` take fp32 inputs (so under bf16 autocast the
    statistics, the normalised output and the affine run in fp32 on any device; a no-op in fp32 runs).
    Returns the number of norm layers hooked."""
    norms = _norm_types()
    count = 0
    for module in model.modules():
        if isinstance(module, norms) and not getattr(module, "_dinov3seg_fp32", False):
            module.register_forward_pre_hook(_to_fp32)
            module._dinov3seg_fp32 = True
            count += 1
    return count
