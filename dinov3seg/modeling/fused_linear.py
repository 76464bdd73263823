"""Linear layers with their bias, activation or residual sum computed inside oneDNN's product (CPU inference).

ATen's CPU ``F.linear`` first writes the broadcast bias into its output and then lets the product accumulate onto
it, and an activation or a residual sum after it is one more pass over the output. oneDNN's inner product applies
all of them to each output tile while the tile is in cache (``torch.ops.mkldnn._linear_pointwise``, the op
``torch.compile`` emits on CPU). The same function as the plain ops, to rounding.

The fused op has no autograd formula, and dispatch modes, tracers and compilers do not know it (FLOP counters, fake
tensors, ``torch.jit.trace``, ``torch.compile``). So it runs only where no graph is recorded and no such mode is
active, on CPU tensors of a dtype oneDNN takes; everywhere else the plain ops run. The head's attention blocks and
AnyUp's residual blocks use it: their products are narrow (128-512 inputs), so the passes it saves are a large
share of their work (docs/benchmarks.md, fourth round).
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import _get_current_dispatch_mode

ONEDNN_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _fused_linear_op():
    """oneDNN's fused linear and the dtypes it runs here (probed once on a tiny product: builds for other CPUs
    may lack a dtype), or (None, ())."""
    ops = getattr(torch.ops, "mkldnn", None)
    if not torch.backends.mkldnn.is_available() or ops is None or not hasattr(ops, "_linear_pointwise"):
        return None, ()
    op, working = ops._linear_pointwise, []
    for dtype in ONEDNN_DTYPES:
        try:
            ones = lambda *shape: torch.ones(*shape, dtype=dtype, device="cpu")  # noqa: E731
            op(ones(2, 4), ones(3, 4), ones(3), "relu", [], "")
            working.append(dtype)
        except (RuntimeError, NotImplementedError):
            pass  # this dtype runs the plain ops
    return (op, tuple(working)) if working else (None, ())


_LINEAR_POINTWISE, _FUSED_DTYPES = _fused_linear_op()


def _post_op(activation: Optional[nn.Module]):
    """(attr, algorithm) of oneDNN's eltwise post-op for ``activation``, or None when it has none."""
    if activation is None:
        return "none", ""
    if type(activation) is nn.ReLU:
        return "relu", ""
    if type(activation) is nn.GELU:
        return "gelu", activation.approximate
    return None


def _compute_dtype(x: torch.Tensor, weight: torch.Tensor) -> Optional[torch.dtype]:
    """The dtype ``F.linear`` computes in: CPU autocast's, else that of ``x`` when the weight has it too."""
    if torch.is_autocast_enabled("cpu") and x.dtype in ONEDNN_DTYPES:
        return torch.get_autocast_dtype("cpu")
    return x.dtype if weight.dtype == x.dtype else None  # (the plain op raises)


def _fused_dtype(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                 residual: Optional[torch.Tensor]) -> Optional[torch.dtype]:
    """The dtype to run the fused op in, or None where the plain ops must run."""
    present = [t for t in (x, weight, bias, residual) if t is not None]
    if _LINEAR_POINTWISE is None or any(t.device.type != "cpu" for t in present):
        return None
    if torch.is_grad_enabled() and any(t.requires_grad for t in present):
        return None
    if _get_current_dispatch_mode() is not None or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return None
    dtype = _compute_dtype(x, weight)
    if dtype not in _FUSED_DTYPES or residual is not None and residual.dtype != dtype:
        return None
    return dtype


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
           activation: Optional[nn.Module] = None, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``residual + activation(F.linear(x, weight, bias))`` on [..., in] -> [..., out]; ``activation`` and
    ``residual`` optional. oneDNN fuses the bias and one of the two (an ``nn.ReLU`` or ``nn.GELU``, or a residual
    of the output's shape); a product with nothing to fuse runs plain."""
    post = _post_op(activation)
    fusable = post is not None and (bias, activation, residual) != (None, None, None) and (
        residual is None or activation is None and residual.shape == x.shape[:-1] + weight.shape[:1])
    dtype = _fused_dtype(x, weight, bias, residual) if fusable else None
    if dtype is None:
        y = F.linear(x, weight, bias)
        y = y if activation is None else activation(y)
        return y if residual is None else residual + y
    x, weight = x.to(dtype), weight.to(dtype)
    bias = None if bias is None else bias.to(dtype)
    if residual is None:
        return _LINEAR_POINTWISE(x, weight, bias, post[0], [], post[1])
    return _LINEAR_POINTWISE.binary(x, residual, weight, bias, "add")


def mlp_add(mlp: nn.Module, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """``residual + mlp(x)`` for timm's ``Mlp`` (fc1, act, fc2; without its norm and with no active dropout)."""
    if not isinstance(mlp.norm, nn.Identity) or mlp.training and (mlp.drop1.p or mlp.drop2.p):
        return residual + mlp(x)
    hidden = linear(x, mlp.fc1.weight, mlp.fc1.bias, activation=mlp.act)
    return linear(hidden, mlp.fc2.weight, mlp.fc2.bias, residual=residual)
