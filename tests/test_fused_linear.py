"""oneDNN-fused linear epilogues (modeling/fused_linear.py): the plain ops' function, used only where it may be."""
import platform

import pytest
import torch
from timm.layers import Mlp
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from dinov3seg.modeling import fused_linear
from dinov3seg.modeling.encoders.anyup import ResBlock
from dinov3seg.modeling.fused_linear import linear, mlp_add
from dinov3seg.modeling.head.class_refinement import ClassRefinement
from dinov3seg.modeling.head.spatial_refinement import GuidedSwinBlock

needs_onednn = pytest.mark.skipif(fused_linear._LINEAR_POINTWISE is None,
                                  reason="this torch build has no oneDNN linear (torch.ops.mkldnn._linear_pointwise)")


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64") or not torch.backends.mkldnn.is_available(),
                    reason="oneDNN's fused linear is expected on x86-64 builds of torch with oneDNN only")
def test_fused_linear_is_found_on_x86_builds_with_onednn():
    """A torch upgrade that renamed or changed the private op would silently fall back to the plain ops (slower,
    same numbers): this fails instead."""
    assert fused_linear._LINEAR_POINTWISE is not None
    assert torch.float32 in fused_linear._FUSED_DTYPES  # (bf16 needs a CPU with AVX-512 at least)


class CountingOp:
    """Stands in for torch.ops.mkldnn._linear_pointwise and counts the calls (both overloads)."""

    def __init__(self, op):
        self.op, self.calls = op, 0

    def __call__(self, *args):
        self.calls += 1
        return self.op(*args)

    def binary(self, *args):
        self.calls += 1
        return self.op.binary(*args)


@pytest.fixture
def fused_calls(monkeypatch):
    counter = CountingOp(fused_linear._LINEAR_POINTWISE)
    monkeypatch.setattr(fused_linear, "_LINEAR_POINTWISE", counter)
    return counter


def _plain(x, layer, activation=None, residual=None):
    y = layer(x)
    y = y if activation is None else activation(y)
    return y if residual is None else residual + y


CASES = [dict(), dict(activation=nn.ReLU()), dict(activation=nn.GELU()), dict(activation=nn.GELU(approximate="tanh")),
         dict(residual=True)]


@needs_onednn
@pytest.mark.parametrize("case", CASES, ids=["bias", "relu", "gelu", "gelu_tanh", "residual"])
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16_autocast"])
def test_fused_linear_computes_the_plain_ops(case, bf16, fused_calls):
    if (torch.bfloat16 if bf16 else torch.float32) not in fused_linear._FUSED_DTYPES:
        pytest.skip("oneDNN's fused linear does not take this dtype on this machine (probed at import)")
    torch.manual_seed(0)
    layer = nn.Linear(16, 24)
    x = torch.randn(3, 5, 7, 16)
    residual = torch.randn(3, 5, 7, 24) if case.get("residual") else None
    if bf16 and residual is not None:
        residual = residual.bfloat16()  # the stream a bf16 autocast model adds to
    activation = case.get("activation")
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        expected = _plain(x, layer, activation, residual)
        got = linear(x, layer.weight, layer.bias, activation=activation, residual=residual)
    assert fused_calls.calls == 1
    assert got.dtype == expected.dtype == (torch.bfloat16 if bf16 else torch.float32)
    tol = dict(atol=0.05, rtol=0.02) if bf16 else dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.float(), expected.float(), **tol)


@needs_onednn
def test_plain_ops_run_where_the_fused_op_may_not(fused_calls):
    torch.manual_seed(0)
    layer = nn.Linear(8, 8)
    x, residual = torch.randn(4, 8), torch.randn(4, 8)

    # autograd: the fused op has no backward, so a training step takes the plain path and gets gradients
    y = linear(x, layer.weight, layer.bias, activation=nn.GELU())
    y.sum().backward()
    assert layer.weight.grad is not None and fused_calls.calls == 0

    with torch.no_grad():
        with FlopCounterMode(display=False) as flops:  # dispatch modes see aten ops only
            linear(x, layer.weight, layer.bias, residual=residual)
        assert flops.get_total_flops() == 2 * 4 * 8 * 8
        linear(x.double(), layer.weight.double(), layer.bias.double())  # a dtype oneDNN does not take
        with torch.autocast("cpu", torch.bfloat16):  # fp32 residual + bf16 product -> fp32 sum, as plain
            out = linear(x, layer.weight, layer.bias, residual=residual)
        assert out.dtype == torch.float32
        linear(x, layer.weight, layer.bias, activation=nn.SiLU())  # no oneDNN post-op for it
        linear(x, layer.weight, layer.bias, residual=residual[:1])  # broadcast residual
        linear(x, layer.weight)  # nothing to fuse
        assert fused_calls.calls == 0
        linear(x, layer.weight, layer.bias, residual=residual)
        assert fused_calls.calls == 1


def _inference_equals_training_path(module, *inputs, atol=1e-5):
    """The module's output under inference_mode (fused products) equals the autograd path (plain products)."""
    module.eval()
    with torch.inference_mode():
        fused = module(*inputs)
    plain = module(*inputs)
    assert plain.requires_grad
    torch.testing.assert_close(fused, plain.detach(), atol=atol, rtol=1e-5)


@needs_onednn
def test_head_blocks_and_anyup_residual_blocks_use_the_fused_products(fused_calls):
    torch.manual_seed(0)
    swin = GuidedSwinBlock(dim=8, guidance_dim=4, num_heads=2, window=4, shift=2)
    _inference_equals_training_path(swin, torch.randn(6, 8, 8, 8), torch.randn(2, 8, 8, 4))
    assert fused_calls.calls == 4  # v, proj + residual, fc1 + GELU, fc2 + residual
    fused_calls.calls = 0
    classes = ClassRefinement(8, 4, num_heads=2, pad_len=0)
    _inference_equals_training_path(classes, torch.randn(2, 5, 8, 6, 6), torch.randn(2, 5, 4))
    assert fused_calls.calls == 3  # v, fc1 + ReLU, fc2 + residual
    fused_calls.calls = 0
    block = ResBlock(16)
    _inference_equals_training_path(block, torch.randn(2, 16, 6, 6).contiguous(memory_format=torch.channels_last))
    assert fused_calls.calls == 1  # the second 1x1 conv, with the skip (the first has nothing to fuse)


def test_mlp_add_is_timm_mlp_plus_residual():
    torch.manual_seed(0)
    mlp = Mlp(8, 32, act_layer=nn.GELU).eval()
    x, residual = torch.randn(5, 8), torch.randn(5, 8)
    with torch.inference_mode():
        torch.testing.assert_close(mlp_add(mlp, x, residual), residual + mlp(x), atol=1e-5, rtol=1e-5)
    dropping = Mlp(8, 32, drop=0.5).train()  # active dropout: the module itself runs
    torch.manual_seed(1)
    expected = residual + dropping(x)
    torch.manual_seed(1)
    torch.testing.assert_close(mlp_add(dropping, x, residual), expected)
