"""MODEL.DINOV3SEG.PRECISION (auto / fp32 / bf16), the fp32 islands under bf16 autocast, and MODEL.COMPILE."""
import logging
from pathlib import Path

import pytest
import torch
from detectron2.modeling import build_model

import dinov3seg  # noqa: F401
from dinov3seg import get_dinov3seg_cfg
from dinov3seg.modeling import compile as compile_mod
from dinov3seg.modeling import precision

REPO = Path(__file__).resolve().parents[1]


def tiny_model(*opts):
    torch.manual_seed(0)
    cfg = get_dinov3seg_cfg(str(REPO / "configs/quickstart.yaml"), ["TEST.LGA.ENABLED", "False", *opts])
    return build_model(cfg)


@pytest.fixture
def cpu_flags(monkeypatch):
    """Pretend /proc/cpuinfo lists the given flags."""
    def set_flags(*flags):
        monkeypatch.setattr(precision, "_cpuinfo_flags", lambda: set(flags))
        precision.cpu_fast_bf16.cache_clear()
    yield set_flags
    precision.cpu_fast_bf16.cache_clear()


def test_auto_follows_the_cpu(cpu_flags):
    cpu = torch.device("cpu")
    cpu_flags("avx2", "fma")
    picked, why = precision.resolve_precision("auto", cpu)
    assert picked == "fp32" and "lacks AMX-BF16 and AVX512-BF16" in why
    cpu_flags("avx2", "avx512f", "avx512_bf16")
    assert precision.resolve_precision("auto", cpu) == ("bf16", "auto: CPU has avx512_bf16 (/proc/cpuinfo)")
    cpu_flags("amx_tile", "amx_bf16")
    assert precision.resolve_precision("auto", cpu)[0] == "bf16"
    assert precision.resolve_precision("fp32", cpu)[0] == "fp32"  # forced, whatever the flags
    cpu_flags("avx2")
    assert precision.resolve_precision("bf16", cpu) == ("bf16", "MODEL.DINOV3SEG.PRECISION=bf16 (forced)")


def test_auto_follows_the_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some GPU")
    for supported, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: supported)
        picked, why = precision.resolve_precision("auto", torch.device("cuda"))
        assert picked == expected and "Some GPU" in why


def test_bad_precision_is_rejected():
    with pytest.raises(ValueError, match="'auto', 'fp32', 'bf16'"):
        precision.check_precision("fp16")


def test_pick_is_logged_once(cpu_flags, caplog):
    cpu_flags("avx2")
    model = tiny_model("MODEL.DINOV3SEG.PRECISION", "auto").eval()
    with caplog.at_level(logging.INFO, logger="dinov3seg.modeling.precision"):
        assert model.picked_precision()[0] == "fp32"
        model.picked_precision()
    lines = [r.getMessage() for r in caplog.records if "runs in" in r.getMessage()]
    assert lines == ["dinov3seg runs in fp32 on cpu: auto: CPU lacks AMX-BF16 and AVX512-BF16 (/proc/cpuinfo), "
                     "so bf16 matmuls are slow"]


def test_norms_stay_fp32_under_bf16_autocast():
    model = tiny_model()
    norm = next(m for m in model.modules() if isinstance(m, torch.nn.LayerNorm))
    x = torch.randn(2, norm.normalized_shape[0], dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert norm(x).dtype == torch.float32
        assert torch.nn.LayerNorm(x.shape[-1])(x).dtype == torch.bfloat16  # what an unhooked norm does
    assert precision.keep_norms_fp32(model) == 0  # already hooked once, not twice


def test_bf16_inference_and_training_agree_with_fp32():
    """Forced bf16 on the CPU (slow here without AMX, tiny sizes): same answers as fp32 up to bf16 rounding;
    training under autocast gives an fp32 loss and fp32 gradients."""
    fp32, bf16 = tiny_model("MODEL.DINOV3SEG.PRECISION", "fp32"), tiny_model("MODEL.DINOV3SEG.PRECISION", "bf16")
    bf16.load_state_dict(fp32.state_dict())
    names = ["red", "green", "blue"]
    g = torch.Generator().manual_seed(0)
    inputs = [{"image": torch.randint(0, 256, (3, 64, 80), generator=g).float(),
               "sem_seg": torch.randint(0, 3, (64, 80), generator=g)}]
    scores = {}
    for name, model in (("fp32", fp32), ("bf16", bf16)):
        model.eval()
        model.set_vocabulary(names)
        with torch.no_grad():
            scores[name] = model(inputs)[0]["sem_seg"]
        assert scores[name].dtype == torch.float32 and scores[name].shape == (3, 64, 80)
    assert (scores["bf16"] - scores["fp32"]).abs().max() < 0.05  # probabilities
    assert (scores["bf16"].argmax(0) == scores["fp32"].argmax(0)).float().mean() > 0.9
    bf16.train()
    loss = bf16(inputs)["loss_sem_seg"]
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in bf16.sem_seg_head.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def test_compile_without_a_compiler_says_so(monkeypatch):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(compile_mod.shutil, "which", lambda name: None)
    assert "no C++ compiler" in compile_mod.compiler_problem(torch.device("cpu"))
    with pytest.raises(RuntimeError, match="MODEL.COMPILE is True but torch.compile cannot run on cpu: no C"):
        tiny_model("MODEL.COMPILE", "True")


@pytest.mark.slow
def test_compiled_model_gives_the_same_scores():
    eager, compiled = tiny_model(), tiny_model("MODEL.COMPILE", "True")
    assert compiled.compiled == ["anyup.encode_pixels"]
    compiled.load_state_dict(eager.state_dict())
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    inputs = [{"image": torch.rand(3, 64, 80) * 255}]
    for model in (eager, compiled):
        model.eval()
        model.set_vocabulary(["red", "green"])
    with torch.no_grad():
        torch.testing.assert_close(compiled(inputs)[0]["sem_seg"], eager(inputs)[0]["sem_seg"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("norm, shape", [(torch.nn.LayerNorm(32), (3, 5, 6, 32)), (torch.nn.GroupNorm(4, 32), (3, 32, 5, 6))])
def test_norm_in_input_dtype_is_the_fp32_norm_rounded_once(norm, shape):
    """The head's, decoder's and AnyUp's norms: a bf16 input gives the fp32 norm of that input rounded once to bf16
    (what the next bf16 product reads; equal but for the last bit of some values), with no fp32 copy; fp32 inputs
    give exactly the module's output."""
    torch.manual_seed(0)
    with torch.no_grad():
        norm.weight.normal_(), norm.bias.normal_()
    x = torch.randn(shape) * 4 + 3  # an offset and a spread that bf16 statistics would get wrong
    with torch.no_grad():
        torch.testing.assert_close(precision.norm_in_input_dtype(norm, x), norm(x), atol=0, rtol=0)
        low = x.bfloat16()
        out, reference = precision.norm_in_input_dtype(norm, low), norm(low.float()).bfloat16()
        assert out.dtype == torch.bfloat16
        assert (out == reference).float().mean() > 0.999
        torch.testing.assert_close(out.float(), reference.float(), atol=1e-6, rtol=2 ** -8)
