"""Parameters, FLOPs, latency and memory of DINOv3Seg at the paper's inference setting (issue 6).

    python -m dinov3seg.tools.benchmark --config-file configs/vitl_384.yaml [--device cpu|cuda] [--classes 150]
        [--image-size 512] [--runs 2] [--json OUT] [--sweep] [--params-only] [--opts KEY VALUE ...]
        [--precision auto|fp32|bf16] [--compile] [--modes fp32 bf16 compiled] [--fvcore] [--train [--train-batch 2]]
        [--traffic] [--counts-only]

Setting: one image through ``model([{"image": ...}])`` in eval mode under ``torch.inference_mode()``: Local-Global
Aggregation as configured (paper: 640 canvas, 384 views, stride 256 -> 4 windows + 1 global view = 5 views in one
batch), ``--classes`` class names (paper: 150, ADE-150), text embeddings cached (encoded once before timing; that
one-time cost is reported apart). Weights are random ("" for every ``MODEL.*.WEIGHTS``): cost does not depend on
their values. Precision: ``MODEL.DINOV3SEG.PRECISION`` (``--precision`` overrides it; "auto" is resolved and the
pick and its reason reported); ``--compile`` sets ``MODEL.COMPILE`` (the first, compiling run is timed apart
from the steady-state runs, and the FLOP pass runs eager). ``--modes`` benchmarks several settings one after
the other in the same run: "fp32", "bf16" (forced), "auto", "compiled" (fp32 + MODEL.COMPILE), "compiled-bf16".

``--fvcore`` adds fvcore's ``FlopCountAnalysis`` (Detectron2's wrapper, what ``tools/analyze_model.py`` and most
papers use) for the same image, per component, with the operators it skipped. ``--train`` adds one training
iteration of the config (``--train-batch`` crops of VIEW_SIZE, random labels, the recipe's optimizer): seconds per
iteration, forward + backward FLOPs, share of peak and peak memory.

The limit: before the model, the machine's own dense matmul throughput is timed (square fp32 and bf16 products,
sized to take about a quarter of a second, best of 3), and every component's achieved FLOP/s is reported with
its share of the peak of the precision it ran in. Its memory bandwidth is timed too (a copy between two
``--bandwidth-mib`` tensors, read + written bytes, best of 3).

Counting rule: FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` in one pass at the model's
precision (under ``torch.no_grad()``, where dispatch modes see the ops as autocast casts them; see
:func:`run_image`); a multiply-add is 2 FLOPs. Counted: matmul / linear / bmm / einsum contractions, convolutions
and transposed convolutions, and scaled-dot-product attention (2 matmuls; the CPU flash kernel is added here,
torch counts the CUDA kernels). Not counted: element-wise ops, normalisations, softmax, activations, pooling,
interpolation and the LGA stitching (memory-bound work, also ignored by fvcore and by the papers' tables).

Memory traffic (``--traffic``): the same pass also counts the bytes of the eager execution
(:class:`TrafficCounter`: every aten op reads its tensor inputs and writes its outputs, at the dtype it runs in,
so bf16 halves the bytes of what autocast casts; views and allocations move nothing, ``NO_TRAFFIC_OPS``). Cache
reuse between ops is not modelled: every op goes to memory. Per component it reports GB per image, FLOP per
byte, the time floors FLOPs / peak and bytes / bandwidth, and two roofline bounds on the share of the peak:
(FLOPs / peak) / max(FLOPs / peak, bytes / bandwidth), the best share of any schedule that moves these bytes, and
the op-by-op bound, the best share of the eager execution (each op at its own roofline, one after the other).
``--counts-only`` counts FLOPs and bytes on fake tensors instead (:func:`count_on_fake_tensors`: no compute, so
the full-size model counts in seconds) and reports the bounds without timing the model.

Per component (``count_params.COMPONENTS``): FLOPs and seconds are *exclusive* (the head's figure excludes the
decoder it calls). "glue" is the rest of the image's total: input normalisation, LGA view cutting and merging,
resizing SAM's input and outputs. Seconds per image are the median of ``--runs`` timed runs; the FLOP pass
doubles as the warm-up (plus ``--warmup`` plain runs).

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` during a run (weights included; the part above the
loaded model is reported too); on CPU, the peak of the bytes malloc has handed out and not taken back (glibc's
``mallinfo2``, sampled every millisecond) above their count before the run, i.e. the working memory of the run
without the weights. (The resident set size would miss it: with ``MODEL.REUSE_FREED_CPU_MEMORY`` freed buffers stay
resident, so the RSS before a run already holds the previous run's peak. Without glibc: the RSS, from
/proc/self/statm.)
"""
import argparse
import collections
import contextlib
import json
import math
import os
import statistics
import sys
import threading
import time
from typing import Callable, Dict, List, Optional

import torch
from torch import nn
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from ..config import get_dinov3seg_cfg
from ..modeling.cpu_memory import malloc_bytes_in_use
from .count_params import COMPONENTS, WEIGHT_KEYS, build_on_meta, count_params, format_params

PAPER = {
    "params_total": 1.1e9,
    "gflops_per_image": 4500.0,
    "seconds_per_image_gpu": 0.37,
    "others": {"OVSeg seconds_per_image_gpu": 1.31, "SCAN gflops_per_image": ">13,500"},
}
# Entry points of each component: (module path, method names). Methods that are not ``forward`` are the
# ones the meta-architecture calls directly (the DINOv3 backbone via get_intermediate_layers).
ENTRY_POINTS = {
    "dinov3_backbone": ("dinotxt.backbone", ("forward", "get_intermediate_layers")),
    "dinotxt_vision_head": ("dinotxt.vision_head", ("forward",)),
    "text_tower": ("dinotxt.text", ("forward",)),
    "anyup": ("anyup", ("forward",)),
    "sam": ("sam", ("forward",)),
    "head": ("sem_seg_head", ("forward",)),
    "decoder": ("sem_seg_head.decoder", ("forward",)),
}
COMPONENT_NAMES = [c[0] for c in COMPONENTS] + ["glue"]
TRAFFIC_RULE = ("eager execution: every aten op reads its tensor inputs and writes its outputs, each distinct "
                "region once per op, at the dtype it runs in; views and allocations move nothing (see module doc)")


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def flop_counter() -> FlopCounterMode:
    """FlopCounterMode that also counts CPU scaled-dot-product attention (torch counts only the GPU kernels)."""
    mapping = {}
    cpu_sdpa = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_sdpa is not None:
        mapping[cpu_sdpa] = _cpu_sdpa_flops
    return FlopCounterMode(display=False, custom_mapping=mapping)


aten = torch.ops.aten
# Ops that move no data: views (the output aliases an input; torch marks them ``is_view``), allocations (memory
# handed out unwritten) and ``prim.device`` (a tensor's device). The composite views (narrow, chunk,
# unflatten, ...) reach a dispatch mode only under inference_mode; a counted pass runs under no_grad and sees
# their decompositions.
NO_TRAFFIC_OPS = frozenset((
    torch.ops.prim.device,
    aten.view, aten._unsafe_view, aten._reshape_alias, aten.view_as, aten.expand, aten.expand_as, aten.permute,
    aten.transpose, aten.t, aten.slice, aten.select, aten.narrow, aten.as_strided, aten.diagonal, aten.unfold,
    aten.detach, aten.alias, aten.lift_fresh, aten.unsqueeze, aten.squeeze, aten.split, aten.split_with_sizes,
    aten.unbind, aten.chunk, aten.unflatten, aten.movedim, aten.view_as_real, aten.view_as_complex,
    aten.empty, aten.empty_like, aten.empty_strided, aten.new_empty, aten.new_empty_strided,
))


def touched_bytes(t: torch.Tensor) -> int:
    """Bytes of the elements a tensor addresses: a broadcast (stride 0) dimension counts once."""
    return t.element_size() * math.prod(size for size, stride in zip(t.shape, t.stride()) if stride != 0)


class TrafficCounter(TorchDispatchMode):
    """Bytes moved by eager execution: every aten op reads its tensor inputs from memory and writes its outputs.

    Per op, each distinct region (storage, offset, shape, strides) of its inputs and outputs counts once: ``x * x``
    reads ``x`` once, a ``copy_`` counts its source and its destination, an in-place op counts its tensor once
    (its read and write count as one: an under-count, so the roofline bound stays an upper bound). Ops in
    ``NO_TRAFFIC_OPS`` count nothing. Tensors count at the dtype the op sees: under autocast, after its casts
    (the casts themselves are ``_to_copy`` ops and count too). Works on fake tensors (shapes only, no compute).

    With ``flops`` (the running total of a FlopCounterMode entered before this counter: an op's FLOPs are its
    growth during the op) and ``balance`` (the machine's FLOP per byte, peak / bandwidth), it also sums
    ``max(bytes, FLOPs / balance)`` over ops: the op-by-op roofline time times the bandwidth, the floor of an
    execution that runs the ops one after the other (eager), each at its own roofline.
    """

    def __init__(self, flops: Callable[[], int] = lambda: 0, balance: float = math.inf):
        super().__init__()
        self.flops, self.balance = flops, balance
        self.by_operator: Dict[str, int] = {}
        self.op_roofline_bytes = 0.0

    def get_total_bytes(self) -> int:
        return sum(self.by_operator.values())

    def get_op_roofline_bytes(self) -> float:
        return self.op_roofline_bytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        flops = self.flops()
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket not in NO_TRAFFIC_OPS:
            regions = {(t.untyped_storage()._cdata, t.storage_offset(), t.shape, t.stride()): touched_bytes(t)
                       for t in pytree.tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)}
            moved, name = sum(regions.values()), func.overloadpacket.__name__
            self.by_operator[name] = self.by_operator.get(name, 0) + moved
            self.op_roofline_bytes += max(moved, (self.flops() - flops) / self.balance)
        return out


class ComponentProbe:
    """Wraps the entry points of the model's components and accumulates exclusive seconds and counts per component.

    Counts: while ``meters`` maps a quantity ("flops", "bytes") to a running total (a counter's
    ``get_total_flops``), every component is charged the growth of each total during its calls, in
    ``counts[quantity][component]``. Nested calls are charged to the innermost component (the decoder's cost is
    not the head's); a component re-entering itself (backbone.get_intermediate_layers -> blocks) is counted once.
    """

    def __init__(self, model: nn.Module, sync: Callable[[], None] = lambda: None):
        self.sync = sync
        self.meters: Dict[str, Callable[[], int]] = {}
        self.seconds: Dict[str, float] = {}
        self.counts: Dict[str, Dict[str, int]] = {}
        self._stack: List[list] = []
        self._patched = []
        for name, (path, methods) in ENTRY_POINTS.items():
            try:
                module = model.get_submodule(path)
            except AttributeError:
                continue  # component disabled in this config
            for method in methods:
                if hasattr(module, method):
                    original = getattr(module, method)
                    setattr(module, method, self._wrap(name, original))
                    self._patched.append((module, method))
        self.reset()

    def reset(self):
        self.seconds = dict.fromkeys(ENTRY_POINTS, 0.0)
        self.counts = {quantity: dict.fromkeys(ENTRY_POINTS, 0) for quantity in self.meters}

    def _read(self) -> Dict[str, int]:
        return {quantity: read() for quantity, read in self.meters.items()}

    def _wrap(self, name: str, fn: Callable) -> Callable:
        def wrapped(*args, **kwargs):
            if self._stack and self._stack[-1][0] == name:
                return fn(*args, **kwargs)
            self.sync()
            self._stack.append([name, time.perf_counter(), self._read(), 0.0, collections.Counter()])
            try:
                return fn(*args, **kwargs)
            finally:
                self.sync()
                _, t0, start, child_seconds, child_counts = self._stack.pop()
                seconds = time.perf_counter() - t0
                spent = {quantity: n - start[quantity] for quantity, n in self._read().items()}
                self.seconds[name] += seconds - child_seconds
                for quantity, n in spent.items():
                    self.counts[quantity][name] += n - child_counts[quantity]
                if self._stack:
                    self._stack[-1][3] += seconds
                    self._stack[-1][4].update(spent)
        return wrapped

    def close(self):
        for module, method in self._patched:
            delattr(module, method)  # the instance attribute hid the class method
        self._patched = []


class PeakMemory:
    """Peak memory of a block of work: CUDA max allocated, or on CPU the peak of malloc's bytes in use above
    their count at the start (the RSS where glibc's ``mallinfo2`` is missing)."""

    RULE_CPU = ("peak of malloc's bytes in use above their count before the run (glibc mallinfo2, sampled every "
                "1 ms; weights excluded)")
    RULE_CPU_RSS = "peak RSS above the RSS before the run (sampled every 1 ms; weights excluded)"
    _malloc_counted = malloc_bytes_in_use() is not None

    def __init__(self, device: torch.device):
        self.device = device
        self.peak = self.above_model = 0

    @classmethod
    def rule(cls, device: torch.device) -> str:
        if device.type == "cuda":
            return "torch.cuda.max_memory_allocated (weights included)"
        return cls.RULE_CPU if cls._malloc_counted else cls.RULE_CPU_RSS

    @classmethod
    def _in_use(cls) -> int:
        """Bytes in use: malloc's (handed out, not freed: small chunks + mmapped ones), else the RSS."""
        in_use = malloc_bytes_in_use()
        if in_use is not None:
            return in_use
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            self._base = self._max = self._in_use()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.001):
            self._max = max(self._max, self._in_use())

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated(self.device)
            self.above_model = self.peak - self._base
        else:
            self._stop.set()
            self._thread.join()
            self._max = max(self._max, self._in_use())
            self.peak = self.above_model = self._max - self._base


def matmul_peak(device: torch.device, dtype: torch.dtype, target_seconds: float = 0.25, max_n: int = 8192) -> dict:
    """GFLOP/s of one dense square ``dtype`` matmul on ``device``: the side doubles from 256 until one product
    takes ``target_seconds`` (or reaches ``max_n``); best of 3 timed products at that side."""
    sync = _sync(device)
    n = 256
    while True:
        a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
        a @ b  # warm-up (kernel selection, allocation)
        sync()
        t0 = time.perf_counter()
        a @ b
        sync()
        seconds = time.perf_counter() - t0
        if seconds >= target_seconds or 2 * n > max_n:
            break
        n *= 2
    for _ in range(2 if seconds < 2 * target_seconds else 0):
        sync()
        t0 = time.perf_counter()
        a @ b
        sync()
        seconds = min(seconds, time.perf_counter() - t0)
    return {"dtype": str(dtype).replace("torch.", ""), "n": n, "gflops_per_s": 2 * n**3 / seconds / 1e9}


def memory_bandwidth(device: torch.device, mib: int = 512, runs: int = 3) -> dict:
    """GB/s of copying one ``mib`` MiB fp32 tensor into another on ``device`` (bytes read + bytes written), best
    of ``runs`` copies after one that touches the destination's pages first. The two 512 MiB tensors hold twice
    the largest last-level CPU cache we have met (480 MiB, the AMX Xeon) and far more than a GPU's L2."""
    sync = _sync(device)
    src = torch.ones(mib * 2**20 // 4, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    seconds = math.inf
    for _ in range(runs):
        sync()
        t0 = time.perf_counter()
        dst.copy_(src)
        sync()
        seconds = min(seconds, time.perf_counter() - t0)
    return {"mib": mib, "gbytes_per_s": 2 * src.nbytes / seconds / 1e9}


def machine_peaks(device: torch.device, target_seconds: float = 0.25, bandwidth_mib: int = 512) -> Dict[str, dict]:
    """Dense matmul throughput in fp32 and bf16 and the memory bandwidth (the limits the components are measured
    against)."""
    return {"fp32": matmul_peak(device, torch.float32, target_seconds),
            "bf16": matmul_peak(device, torch.bfloat16, target_seconds),
            "memory": memory_bandwidth(device, bandwidth_mib)}


def build_model(cfg, device: torch.device, fake: bool = False) -> nn.Module:
    """The cfg's model in eval mode with random weights; ``fake``: built in place on ``device`` (under a
    FakeTensorMode, whose tensors Detectron2's ``model.to(device)`` cannot swap)."""
    from detectron2.modeling import META_ARCH_REGISTRY
    from detectron2.modeling import build_model as d2_build

    cfg = cfg.clone()
    cfg.defrost()
    # No disk text cache: the encoding cost is what is measured, and random weights are never seen again.
    cfg.merge_from_list([x for key in WEIGHT_KEYS for x in (key, "")] + ["MODEL.DEVICE", str(device),
                                                                         "MODEL.DINOV3SEG.TEXT_CACHE_DIR", ""])
    if fake:
        with torch.device(device):
            return META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg).eval()
    return d2_build(cfg).eval()


def class_names(n: int) -> List[str]:
    return [f"class number {i}" for i in range(n)]


def _sync(device: torch.device) -> Callable[[], None]:
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def encode_vocabulary(model: nn.Module, names: List[str], device: torch.device) -> Dict[str, float]:
    """One-time cost of encoding a vocabulary with the text tower (the in-memory cache is cleared first)."""
    model.text_embedder.clear_cache()
    sync = _sync(device)
    with torch.inference_mode(), flop_counter() as counter:
        sync()
        t0 = time.perf_counter()
        model._text(names)
        sync()
        seconds = time.perf_counter() - t0
    return {"classes": len(names), "templates": model.text_embedder.num_templates,
            "gflops": counter.get_total_flops() / 1e9, "seconds": seconds}


def run_image(model: nn.Module, image: torch.Tensor, counted: bool = False) -> None:
    """One image through the model under ``torch.inference_mode()``, or ``torch.no_grad()`` for a counted pass.

    The same kernels run either way, but a TorchDispatchMode (the FLOP and traffic counters) sees them only with
    autograd's dispatch on: then composite ops (einsum, linear, matmul) reach it decomposed and after CPU
    autocast's casts, as they execute. Under inference_mode they reach it whole and skip autocast's casts (a
    mixed-dtype einsum in SAM fails in bf16)."""
    with torch.no_grad() if counted else torch.inference_mode():
        model([{"image": image, "height": image.shape[-2], "width": image.shape[-1]}])


def count_image(model: nn.Module, image: torch.Tensor, probe: ComponentProbe, balance: Optional[float] = None) -> dict:
    """One counted pass of ``image`` at the model's precision: {"flops": counts}, and with ``balance`` (the
    machine's FLOP per byte, :class:`TrafficCounter`) also "bytes" and "op_roofline_bytes" counts and
    "bytes_by_operator"; counts are {component: exclusive count, "glue": the rest, "total": the image's}."""
    # compiled graphs are opaque to the counters: count on the eager path (same ops, same FLOPs and bytes)
    eager = torch.compiler.set_stance("force_eager") if getattr(model, "compiled", []) else contextlib.nullcontext()
    flops = flop_counter()
    moved = TrafficCounter(flops.get_total_flops, balance) if balance is not None else None
    with eager, flops, moved or contextlib.nullcontext():
        probe.meters = {"flops": flops.get_total_flops}
        if moved is not None:
            probe.meters.update(bytes=moved.get_total_bytes, op_roofline_bytes=moved.get_op_roofline_bytes)
        probe.reset()
        try:
            run_image(model, image, counted=True)
            totals = probe._read()
        finally:
            probe.meters = {}
    counts = {quantity: dict(probe.counts[quantity], glue=total - sum(probe.counts[quantity].values()), total=total)
              for quantity, total in totals.items()}
    if moved is not None:
        counts["bytes_by_operator"] = dict(moved.by_operator)
    return counts


@contextlib.contextmanager
def counted_in_fp32(model: nn.Module):
    """Run a counting pass without autocast (fvcore's trace, the training step's FLOP pass): the same ops and
    FLOPs."""
    saved = dict(model._picked_precision)
    model._picked_precision[model.device.type] = ("fp32", "FLOP count")
    try:
        yield
    finally:
        model._picked_precision.clear()
        model._picked_precision.update(saved)


def measure(model: nn.Module, image: torch.Tensor, device: torch.device, runs: int, warmup: int,
            count_flops: bool = True, balance: Optional[float] = None) -> dict:
    """FLOPs, and with ``balance`` bytes moved (one counted pass, also the first warm-up: :func:`count_image`),
    then ``runs`` timed runs; per-component breakdown."""
    sync = _sync(device)
    probe = ComponentProbe(model, sync)
    try:
        result = count_image(model, image, probe, balance) if count_flops else {}
        compiled = bool(getattr(model, "compiled", []))
        if compiled:  # the first compiled call compiles: timed apart from the steady state
            sync()
            t0 = time.perf_counter()
            run_image(model, image)
            sync()
            result["first_compiled_run_seconds"] = time.perf_counter() - t0
        for _ in range(warmup):
            run_image(model, image)
        times, memories, breakdown = [], [], []
        for _ in range(runs):
            probe.reset()
            with PeakMemory(device) as memory:
                sync()
                t0 = time.perf_counter()
                run_image(model, image)
                sync()
                seconds = time.perf_counter() - t0
            times.append(seconds)
            memories.append(memory)
            breakdown.append(dict(probe.seconds, glue=seconds - sum(probe.seconds.values())))
        result["seconds"] = statistics.median(times)
        result["seconds_all"] = times
        result["component_seconds"] = {k: statistics.median(b[k] for b in breakdown) for k in breakdown[0]}
        result["peak_memory_bytes"] = max(m.peak for m in memories)
        result["peak_memory_above_model_bytes"] = max(m.above_model for m in memories)
        if compiled:
            result["compile_seconds"] = result["first_compiled_run_seconds"] - result["seconds"]
        return result
    finally:
        probe.close()


def num_views(model: nn.Module, image: torch.Tensor) -> int:
    return model.lga.make_views(image.to(model.device))[0].shape[0]


def random_image(height: int, width: int, device: torch.device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return (torch.rand(3, height, width, generator=generator) * 255).to(device)


def roofline(flops: int, moved: int, op_roofline_bytes: float, peak_gflops_per_s: float, gbytes_per_s: float) -> dict:
    """What moving ``moved`` bytes allows ``flops`` FLOPs: GFLOPs, GB, FLOP per byte, the time floors set by the
    matmul peak and by the memory bandwidth, and the roofline bound on the share of the peak,
    (flops / peak) / max(flops / peak, bytes / bandwidth): the best share of the peak that any implementation
    moving these bytes can reach. The op-by-op bound divides by the op-by-op floor (``op_roofline_bytes`` /
    bandwidth, :class:`TrafficCounter`) instead: the best share of the eager execution, whose ops run one after
    the other. Bounds are None where there is neither work nor traffic."""
    compute, memory = flops / peak_gflops_per_s / 1e9, moved / gbytes_per_s / 1e9
    op_by_op = op_roofline_bytes / gbytes_per_s / 1e9
    return {"gflops_per_image": flops / 1e9, "gbytes_per_image": moved / 1e9,
            "flop_per_byte": flops / moved if moved else None,
            "compute_floor_seconds": compute, "memory_floor_seconds": memory, "op_by_op_floor_seconds": op_by_op,
            "roofline_share_of_peak": compute / max(compute, memory) if compute or memory else None,
            "op_by_op_share_of_peak": compute / op_by_op if op_by_op else None}


def traffic_report(counts: dict, peaks: Dict[str, dict], precision: str) -> dict:
    """:func:`roofline` of each component and of the whole image from :func:`count_image`'s counts, against the
    ``precision`` matmul peak and the memory bandwidth: {"components": {name: row}, "total": row, ...}."""
    peak, bandwidth = peaks[precision]["gflops_per_s"], peaks["memory"]["gbytes_per_s"]
    rows = {name: roofline(*(counts[q].get(name, 0) for q in ("flops", "bytes", "op_roofline_bytes")), peak,
                           bandwidth) for name in COMPONENT_NAMES + ["total"]}
    by_operator = sorted(counts["bytes_by_operator"].items(), key=lambda kv: -kv[1])
    return {"components": {name: rows[name] for name in COMPONENT_NAMES}, "total": rows["total"],
            "by_operator_gbytes": {op: n / 1e9 for op, n in by_operator}, "rule": TRAFFIC_RULE}


def machine_balance(peaks: Dict[str, dict], precision: str) -> float:
    """The machine's FLOP per byte in ``precision``: matmul peak / memory bandwidth."""
    return peaks[precision]["gflops_per_s"] / peaks["memory"]["gbytes_per_s"]


def benchmark(cfg, device: torch.device, classes: int, image_size, runs: int, warmup: int,
              config_file: str = "", peaks: Optional[Dict[str, dict]] = None, fvcore: bool = False,
              traffic: bool = False) -> dict:
    """The full report of one config (see the module doc); JSON-serialisable. ``peaks``: :func:`machine_peaks`
    (timed here when not given); ``fvcore``: also fvcore's count (:func:`fvcore_count`); ``traffic``: also the
    bytes each component moves and its roofline bound (:func:`traffic_report`, under "traffic")."""
    peaks = peaks or machine_peaks(device)
    torch.manual_seed(0)
    model = build_model(cfg, device)
    picked, reason = model.picked_precision()
    peak = peaks[picked]["gflops_per_s"]
    params = count_params(model)
    names = class_names(classes)
    model.set_vocabulary(names)
    vocabulary = encode_vocabulary(model, names, device)
    image = random_image(*image_size, device)
    measured = measure(model, image, device, runs, warmup, balance=machine_balance(peaks, picked) if traffic else None)
    components = {}
    for name in COMPONENT_NAMES:
        row = params.get(name, {"total": 0, "trainable": 0})
        gflops, seconds = measured["flops"].get(name, 0) / 1e9, measured["component_seconds"].get(name, 0.0)
        rate = gflops / seconds if seconds > 0 else 0.0
        components[name] = {
            "params": row["total"], "params_trainable": row["trainable"],
            "gflops_per_image": gflops, "seconds_per_image": seconds,
            "gflops_per_s": rate, "share_of_peak": rate / peak,
        }
    components["text_tower"]["note"] = "cached; per-vocabulary cost in 'vocabulary_encoding'"
    report = {
        "config": config_file,
        "device": device_description(device),
        "precision": picked,
        "precision_reason": reason,
        "compiled": list(model.compiled),
        "compile_seconds": measured.get("compile_seconds"),
        "first_compiled_run_seconds": measured.get("first_compiled_run_seconds"),
        "machine_peaks": peaks,
        "gflops_per_s": measured["flops"]["total"] / 1e9 / measured["seconds"],
        "share_of_peak": measured["flops"]["total"] / 1e9 / measured["seconds"] / peak,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "setting": dict(setting(cfg, model, image, classes), runs=runs, warmup=warmup),
        "params_total": params["all"]["total"],
        "params_trainable": params["all"]["trainable"],
        "gflops_per_image": measured["flops"]["total"] / 1e9,
        "gmacs_per_image": measured["flops"]["total"] / 2e9,
        "seconds_per_image": measured["seconds"],
        "seconds_all_runs": measured["seconds_all"],
        "peak_memory_bytes": measured["peak_memory_bytes"],
        "peak_memory_above_model_bytes": measured["peak_memory_above_model_bytes"],
        "peak_memory_rule": PeakMemory.rule(device),
        "flop_rule": "torch FlopCounterMode, multiply-add = 2 FLOPs; matmul/conv/SDPA only (see module doc)",
        "vocabulary_encoding": vocabulary,
        "components": components,
        "paper": PAPER,
    }
    if traffic:
        report["traffic"] = traffic_report(measured, peaks, picked)
    if fvcore:
        report["fvcore"] = fvcore_count(model, image)
    return report


def setting(cfg, model: nn.Module, image: torch.Tensor, classes: int) -> dict:
    """The image, vocabulary and LGA setting of a run."""
    return {"image": list(image.shape[-2:]), "classes": classes, "views": num_views(model, image),
            "view_size": cfg.MODEL.DINOV3SEG.VIEW_SIZE, "lga_canvas": cfg.TEST.LGA.CANVAS,
            "lga_stride": cfg.TEST.LGA.STRIDE, "class_chunk_size": cfg.MODEL.DINOV3SEG.CLASS_CHUNK_SIZE}


class GroupNormKeepsLayout(TorchDispatchMode):
    """For fake tensors: GroupNorm's output takes its input's channels-last layout, as the CPU and CUDA kernels give
    it (the meta kernel returns a contiguous tensor, so the fake pass counted copies that the real pass does not
    make after AnyUp's channels-last norms). Entered outside the counters: its own restriding is not counted."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten.native_group_norm.default:
            x = args[0]
            if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
                out = (out[0].contiguous(memory_format=torch.channels_last), *out[1:])
        return out


def count_on_fake_tensors(cfg, device: torch.device, classes: int, image_size, peaks: Dict[str, dict],
                          config_file: str = "") -> dict:
    """FLOPs and bytes moved of one image per component and their roofline bounds, counted on fake tensors
    (shapes, dtypes and strides, no data: nothing is computed, the full-size model counts in seconds) at the
    precision ``cfg`` runs in on ``device``, autocast included. The counts are those of a real counted pass;
    the class embeddings, cached in a real run, are a T x P x 2D stand-in (encoding reads token values)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from ..modeling.meta_arch import head_input_shape

    with FakeTensorMode(allow_non_fake_inputs=True):
        model = build_model(cfg, device, fake=True)
        picked, reason = model.picked_precision()
        model.set_vocabulary(class_names(classes))
        text = torch.zeros(classes, model.text_embedder.num_templates, head_input_shape(cfg)["text"].channels)
        model._text = lambda names: text
        image = random_image(*image_size, device)
        with GroupNormKeepsLayout():
            counts = count_image(model, image, ComponentProbe(model), machine_balance(peaks, picked))
        run_setting = setting(cfg, model, image, classes)
    return {"config": config_file, "device": device_description(device), "precision": picked,
            "precision_reason": reason, "machine_peaks": peaks, "setting": run_setting, "torch": torch.__version__,
            "traffic": traffic_report(counts, peaks, picked)}


def training_batch(batch: int, size: int, classes: int, device: torch.device) -> List[dict]:
    """``batch`` random size x size images with random labels among ``classes`` (Detectron2 training dicts)."""
    g = torch.Generator().manual_seed(0)
    return [{"image": (torch.rand(3, size, size, generator=g) * 255).to(device),
             "sem_seg": torch.randint(0, classes, (size, size), generator=g).to(device)} for _ in range(batch)]


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: List[dict]) -> float:
    """One training iteration: loss, backward, optimizer step; returns the loss."""
    loss = model(batch)["loss_sem_seg"]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def benchmark_training(cfg, device: torch.device, batch: int, runs: int, peaks: Dict[str, dict]) -> dict:
    """One training iteration of ``cfg`` (the recipe's optimizer: AdamW, parameter groups, clipping) on a batch of
    VIEW_SIZE crops with random labels over the training vocabulary: FLOPs (forward + backward, counted in one
    iteration, which is also the warm-up), then the median of ``runs`` timed iterations and their peak memory."""
    from ..solver import build_optimizer

    torch.manual_seed(0)
    model = build_model(cfg, device).train()
    picked, reason = model.picked_precision()
    optimizer = build_optimizer(cfg, model)
    crops = training_batch(batch, cfg.MODEL.DINOV3SEG.VIEW_SIZE, len(model.train_class_names), device)
    model._text(model.train_class_names)  # the vocabulary is encoded once and cached, as in a training run
    with counted_in_fp32(model), flop_counter() as counter:
        train_step(model, optimizer, crops)
    sync, times = _sync(device), []
    with PeakMemory(device) as memory:
        for _ in range(runs):
            sync()
            t0 = time.perf_counter()
            loss = train_step(model, optimizer, crops)
            sync()
            times.append(time.perf_counter() - t0)
    seconds, gflops = statistics.median(times), counter.get_total_flops() / 1e9
    return {"precision": picked, "precision_reason": reason, "batch": batch, "crop": cfg.MODEL.DINOV3SEG.VIEW_SIZE,
            "classes": len(model.train_class_names), "seconds_per_iter": seconds, "seconds_all": times,
            "gflops_per_iter": gflops, "gflops_per_s": gflops / seconds,
            "share_of_peak": gflops / seconds / peaks[picked]["gflops_per_s"],
            "peak_memory_bytes": memory.peak, "loss": loss}


def _fvcore_layer_norm(inputs, outputs) -> int:
    """fvcore's layer-norm rule (5 per element with an affine, 4 without), also for the 1-D input of the class
    refinement's padding token, which fvcore's own handle rejects (it asserts a rank of 2 to 5)."""
    from fvcore.nn.jit_handles import get_shape

    return math.prod(get_shape(inputs[0])) * (5 if get_shape(inputs[2]) is not None else 4)


def fvcore_count(model: nn.Module, image: torch.Tensor) -> dict:
    """fvcore's ``FlopCountAnalysis`` (Detectron2's wrapper, as ``tools/analyze_model.py``) on the same image, per
    component (exclusive, as ours), in fvcore's unit: one multiply-add = 1 "flop" (= our GMACs). Lists the
    operators it found no counting rule for; Detectron2 silences some element-wise ones (``_IGNORED_OPS``)."""
    from detectron2.utils.analysis import FlopCountAnalysis

    inputs = [{"image": image, "height": image.shape[-2], "width": image.shape[-1]}]
    with torch.no_grad(), counted_in_fp32(model):
        analysis = FlopCountAnalysis(model, inputs)
        analysis.set_op_handle("aten::layer_norm", _fvcore_layer_norm)
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        by_module, by_operator = analysis.by_module(), analysis.by_operator()
    paths = {name: "model." + path for name, (path, _) in ENTRY_POINTS.items()}
    inclusive = {name: by_module.get(path, 0) for name, path in paths.items()}
    components = {}
    for name, path in paths.items():
        inner = [n for n, p in paths.items() if p.startswith(path + ".")]
        components[name] = (inclusive[name] - sum(inclusive[n] for n in inner)) / 1e9
    total = analysis.total() / 1e9
    components["glue"] = total - sum(components.values())
    return {"gmacs_per_image": total, "components": components,
            "by_operator": {k: v / 1e9 for k, v in by_operator.items()},
            "skipped_ops": dict(analysis.unsupported_ops())}


def sweep(cfg, device: torch.device, class_counts: List[int], sizes: List[int], runs: int,
          default_classes: int, chunk: Optional[int]) -> dict:
    """Time and memory vs the number of classes (image 512) and vs the image's short side (canvas = short side)."""
    cfg = cfg.clone()
    cfg.defrost()
    if chunk is not None:
        cfg.MODEL.DINOV3SEG.CLASS_CHUNK_SIZE = chunk
    rows = {"class_chunk_size": cfg.MODEL.DINOV3SEG.CLASS_CHUNK_SIZE, "classes": [], "image_short_side": []}
    model = build_model(cfg, device)
    image = random_image(512, 512, device)
    for t in class_counts:
        model.set_vocabulary(class_names(t))
        encode_vocabulary(model, class_names(t), device)
        m = measure(model, image, device, runs, warmup=1 if device.type == "cuda" else 0, count_flops=False)
        rows["classes"].append({"classes": t, "seconds": m["seconds"], "peak_memory_bytes": m["peak_memory_bytes"]})
        print(_sweep_line(f"T={t}", m), flush=True)
    # Canvas follows the short side (keep aspect), so the number of LGA windows grows with the image.
    model.set_vocabulary(class_names(default_classes))
    for side in sizes:
        model.lga.canvas, model.lga.keep_aspect = side, True
        image = random_image(side, side * 4 // 3, device)
        m = measure(model, image, device, runs, warmup=1 if device.type == "cuda" else 0, count_flops=False)
        row = {"short_side": side, "image": list(image.shape[-2:]), "views": num_views(model, image),
               "seconds": m["seconds"], "peak_memory_bytes": m["peak_memory_bytes"]}
        rows["image_short_side"].append(row)
        print(_sweep_line(f"short side {side} ({row['views']} views)", m), flush=True)
    return rows


def _sweep_line(label: str, m: dict) -> str:
    return f"  {label:<28} {m['seconds']:9.3f} s/image   peak {m['peak_memory_bytes'] / 2**20:10.1f} MiB"


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = "cpu"
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    return f"{cpu}, {torch.get_num_threads()} threads"


def format_report(r: dict) -> str:
    s = r["setting"]
    peaks = r["machine_peaks"]
    lines = [f"dinov3seg benchmark: {r['config']} on {r['device']} ({r['precision']}: {r['precision_reason']}), "
             f"torch {r['torch']}" + (f", compiled: {', '.join(r['compiled'])}" if r["compiled"] else ""),
             f"machine limit: dense matmul {peaks['fp32']['gflops_per_s']:.1f} GFLOP/s fp32 (n={peaks['fp32']['n']}), "
             f"{peaks['bf16']['gflops_per_s']:.1f} GFLOP/s bf16 (n={peaks['bf16']['n']}), memory "
             f"{peaks['memory']['gbytes_per_s']:.1f} GB/s (copy of {peaks['memory']['mib']} MiB); '% peak' below is "
             f"against the {r['precision']} figure",
             f"setting: image {s['image'][0]}x{s['image'][1]}, LGA canvas {s['lga_canvas']} stride {s['lga_stride']}"
             f" -> {s['views']} views of {s['view_size']}, {s['classes']} classes (text cached), "
             f"median of {s['runs']} runs",
             f"{'component':<22}{'params':>15}{'trainable':>13}{'GFLOPs/img':>13}{'%':>6}{'s/img':>10}{'%':>6}"
             f"{'GFLOP/s':>10}{'% peak':>8}"]
    total_f, total_s = r["gflops_per_image"], r["seconds_per_image"]
    for name, c in r["components"].items():
        lines.append(f"{name:<22}{c['params']:>15,}{c['params_trainable']:>13,}{c['gflops_per_image']:>13.1f}"
                     f"{100 * c['gflops_per_image'] / max(total_f, 1e-12):>6.1f}{c['seconds_per_image']:>10.3f}"
                     f"{100 * c['seconds_per_image'] / max(total_s, 1e-12):>6.1f}"
                     f"{c['gflops_per_s']:>10.1f}{100 * c['share_of_peak']:>8.1f}")
    lines.append(f"{'total':<22}{r['params_total']:>15,}{r['params_trainable']:>13,}{total_f:>13.1f}{100:>6}"
                 f"{total_s:>10.3f}{100:>6}{r['gflops_per_s']:>10.1f}{100 * r['share_of_peak']:>8.1f}")
    if r["compiled"]:
        lines.append(f"compile: first run {r['first_compiled_run_seconds']:.1f} s = steady state + "
                     f"{r['compile_seconds']:.1f} s of compilation")
    trainable = ("head", "decoder", "glue")
    share_f = sum(r["components"][n]["gflops_per_image"] for n in trainable) / max(total_f, 1e-12)
    share_s = sum(r["components"][n]["seconds_per_image"] for n in trainable) / max(total_s, 1e-12)
    v = r["vocabulary_encoding"]
    lines += [
        f"head + decoder + glue: {100 * share_f:.1f} % of FLOPs, {100 * share_s:.1f} % of time (target <= 25 %)",
        f"peak memory: {r['peak_memory_bytes'] / 2**20:.1f} MiB ({r['peak_memory_rule']})",
        f"vocabulary encoding (once): {v['classes']} classes x {v['templates']} templates: "
        f"{v['gflops']:.1f} GFLOPs, {v['seconds']:.3f} s",
        f"FLOPs: {r['flop_rule']}; = {r['gmacs_per_image']:,.0f} GMACs (fvcore and detectron2's analyze_model "
        "count a multiply-add as one flop)",
        "paper: ~1.1 B params, ~4,500 GFLOPs/image, 0.37 s/image on GPU (OVSeg 1.31 s; SCAN >13,500 GFLOPs)",
        f"ours:  {r['params_total'] / 1e9:.3f} B params, {total_f:,.0f} GFLOPs/image, {total_s:.3f} s/image "
        f"on {r['device']}",
    ]
    if "traffic" in r:
        lines.append(format_traffic(r))
    return "\n".join(lines)


def format_traffic(r: dict) -> str:
    """Bytes moved per component (eager), FLOP per byte, the time floors and roofline bounds on the share of the
    peak (:func:`roofline`); beside the measured seconds and share where the report has them."""
    t, peaks, precision = r["traffic"], r["machine_peaks"], r["precision"]
    peak, bandwidth = peaks[precision]["gflops_per_s"], peaks["memory"]["gbytes_per_s"]
    timed = "components" in r
    lines = [f"memory traffic of eager execution (each op reads its inputs and writes its outputs) and roofline "
             f"bounds: {precision} peak {peak:.1f} GFLOP/s, memory {bandwidth:.1f} GB/s: compute-bound from "
             f"{peak / bandwidth:.1f} FLOP/byte",
             "bound % = (FLOPs / peak) / max(FLOPs / peak, bytes / bandwidth): any schedule moving these bytes; "
             "op-by-op: each op alone at its roofline, one after the other (the eager execution)",
             f"{'component':<22}{'GFLOPs/img':>12}{'GB/img':>10}{'FLOP/B':>9}{'compute s':>11}{'memory s':>10}"
             f"{'bound %':>9}{'op-by-op s':>12}{'bound %':>9}" + (f"{'s/img':>10}{'% peak':>8}" if timed else "")]
    for name, row in list(t["components"].items()) + [("total", t["total"])]:
        line = (f"{name:<22}{row['gflops_per_image']:>12.1f}{row['gbytes_per_image']:>10.2f}"
                f"{_maybe(row['flop_per_byte'], 9, 1)}{row['compute_floor_seconds']:>11.3f}"
                f"{row['memory_floor_seconds']:>10.3f}{_maybe(row['roofline_share_of_peak'], 9, 1, 100)}"
                f"{row['op_by_op_floor_seconds']:>12.3f}{_maybe(row['op_by_op_share_of_peak'], 9, 1, 100)}")
        if timed:
            measured = r["components"][name] if name != "total" else r
            line += f"{measured['seconds_per_image']:>10.3f}{100 * measured['share_of_peak']:>8.1f}"
        lines.append(line)
    lines.append("traffic by operator (GB/img): " + ", ".join(
        f"{op} {gb:.2f}" for op, gb in list(t["by_operator_gbytes"].items())[:12]))
    return "\n".join(lines)


def _maybe(value: Optional[float], width: int, digits: int, scale: float = 1.0) -> str:
    return f"{'-':>{width}}" if value is None else f"{scale * value:>{width}.{digits}f}"


def format_counts(r: dict) -> str:
    """The report of :func:`count_on_fake_tensors`."""
    s = r["setting"]
    return "\n".join([
        f"dinov3seg counts on fake tensors (no compute): {r['config']} on {r['device']} ({r['precision']}: "
        f"{r['precision_reason']}), torch {r['torch']}",
        f"setting: image {s['image'][0]}x{s['image'][1]}, LGA canvas {s['lga_canvas']} stride {s['lga_stride']} -> "
        f"{s['views']} views of {s['view_size']}, {s['classes']} classes (text cached)",
        format_traffic(r)])


def format_fvcore(r: dict) -> str:
    """Ours (GMACs = GFLOPs / 2) beside fvcore's count, per component, and fvcore's skipped operators."""
    f = r["fvcore"]
    lines = ["fvcore FlopCountAnalysis (Detectron2's, multiply-add = 1) beside ours (GMACs = our GFLOPs / 2):",
             f"{'component':<22}{'ours GMACs':>12}{'fvcore':>12}{'fvcore/ours':>13}"]
    for name, c in r["components"].items():
        ours, theirs = c["gflops_per_image"] / 2, f["components"].get(name, 0.0)
        lines.append(f"{name:<22}{ours:>12.1f}{theirs:>12.1f}{theirs / ours if ours else float('nan'):>13.3f}")
    lines.append(f"{'total':<22}{r['gmacs_per_image']:>12.1f}{f['gmacs_per_image']:>12.1f}"
                 f"{f['gmacs_per_image'] / r['gmacs_per_image']:>13.3f}")
    lines.append("fvcore by operator (G): " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(
        f["by_operator"].items(), key=lambda kv: -kv[1])))
    lines.append("skipped by fvcore (no rule; calls): " + ", ".join(f"{k} {v}" for k, v in sorted(
        f["skipped_ops"].items(), key=lambda kv: -kv[1])))
    return "\n".join(lines)


def format_training(t: dict) -> str:
    return (f"training: batch {t['batch']} of {t['crop']} crops, {t['classes']} classes, {t['precision']}: "
            f"{t['seconds_per_iter']:.3f} s/iteration, {t['gflops_per_iter']:,.1f} GFLOPs/iteration (forward + "
            f"backward), {t['gflops_per_s']:.1f} GFLOP/s = {100 * t['share_of_peak']:.1f} % of the {t['precision']} "
            f"peak, peak memory {t['peak_memory_bytes'] / 2**20:,.1f} MiB")


MODES = {"fp32": ("fp32", False), "bf16": ("bf16", False), "auto": ("auto", False), "compiled": ("fp32", True),
         "compiled-bf16": ("bf16", True)}


def mode_cfg(cfg, precision: Optional[str], compile_: Optional[bool]):
    """``cfg`` with MODEL.DINOV3SEG.PRECISION / MODEL.COMPILE overridden (None keeps the config's value)."""
    cfg = cfg.clone()
    cfg.defrost()
    if precision is not None:
        cfg.MODEL.DINOV3SEG.PRECISION = precision
    if compile_ is not None:
        cfg.MODEL.COMPILE = compile_
    return cfg


def format_modes(reports: Dict[str, dict]) -> str:
    """One line per component: seconds, GFLOP/s and % of peak in every benchmarked mode."""
    names = list(reports)
    head = f"{'component':<22}" + "".join(f"{m + ' s':>12}{'GFLOP/s':>9}{'%pk':>6}" for m in names)
    lines = ["modes side by side (per image; % of the peak of the mode's precision):", head]
    for comp in list(next(iter(reports.values()))["components"]) + ["total"]:
        row = f"{comp:<22}"
        for m in names:
            r = reports[m]
            c = r["components"][comp] if comp != "total" else {
                "seconds_per_image": r["seconds_per_image"], "gflops_per_s": r["gflops_per_s"],
                "share_of_peak": r["share_of_peak"]}
            row += f"{c['seconds_per_image']:>12.3f}{c['gflops_per_s']:>9.1f}{100 * c['share_of_peak']:>6.1f}"
        lines.append(row)
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default="configs/vitl_384.yaml")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    parser.add_argument("--classes", type=int, default=150, help="vocabulary size (paper: 150)")
    parser.add_argument("--image-size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"))
    parser.add_argument("--runs", type=int, default=2, help="timed runs; the median is reported")
    parser.add_argument("--warmup", type=int, default=None,
                        help="plain warm-up runs after the FLOP pass (default: 0 on CPU, 2 on CUDA)")
    parser.add_argument("--json", default="", help="write the report (and sweep) to this JSON file")
    parser.add_argument("--params-only", action="store_true", help="only count parameters (meta device, instant)")
    parser.add_argument("--sweep", action="store_true", help="also time vs classes and vs image size")
    parser.add_argument("--sweep-classes", type=int, nargs="+", default=[20, 150, 847, 2000])
    parser.add_argument("--sweep-sizes", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--sweep-chunk", type=int, default=None,
                        help="MODEL.DINOV3SEG.CLASS_CHUNK_SIZE for the sweep (default: the config's)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default=None,
                        help="override MODEL.DINOV3SEG.PRECISION")
    parser.add_argument("--compile", action="store_true", help="set MODEL.COMPILE (torch.compile where it pays)")
    parser.add_argument("--modes", nargs="+", choices=tuple(MODES), default=None,
                        help="benchmark these settings one after the other in this run (e.g. fp32 compiled)")
    parser.add_argument("--fvcore", action="store_true",
                        help="also count with fvcore's FlopCountAnalysis (Detectron2's), per component")
    parser.add_argument("--traffic", action="store_true",
                        help="also count the bytes each component moves (eager) and its roofline bound on the share "
                             "of the peak")
    parser.add_argument("--counts-only", action="store_true",
                        help="only count FLOPs and bytes per component on fake tensors (no compute: seconds for "
                             "vitl_384) and their roofline bounds against this machine's measured limits")
    parser.add_argument("--train", action="store_true", help="also time training iterations (--train-batch crops)")
    parser.add_argument("--train-batch", type=int, default=2, help="crops per training iteration")
    parser.add_argument("--peak-seconds", type=float, default=0.25,
                        help="time of one product when timing the machine's matmul peak")
    parser.add_argument("--bandwidth-mib", type=int, default=512,
                        help="size of each of the two tensors of the copy that times the memory bandwidth")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = get_dinov3seg_cfg(args.config_file, args.opts)
    if args.params_only:
        print(format_params(count_params(build_on_meta(cfg))))
        return 0
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device available")
    warmup = args.warmup if args.warmup is not None else (2 if device.type == "cuda" else 0)
    peaks = machine_peaks(device, args.peak_seconds, args.bandwidth_mib)
    settings = ({m: MODES[m] for m in args.modes} if args.modes else
                {"run": (args.precision, True if args.compile else None)})
    reports = {}
    if args.counts_only:
        for name, (precision, _) in settings.items():
            reports[name] = count_on_fake_tensors(mode_cfg(cfg, precision, None), device, args.classes,
                                                  tuple(args.image_size), peaks, args.config_file)
            print(format_counts(reports[name]), flush=True)
        write_json(args.json, reports["run"] if not args.modes else dict(reports[args.modes[0]], modes=reports))
        return 0
    for name, (precision, compile_) in settings.items():
        reports[name] = benchmark(mode_cfg(cfg, precision, compile_), device, args.classes, tuple(args.image_size),
                                  args.runs, warmup, args.config_file, peaks, args.fvcore, args.traffic)
        if args.modes:
            reports[name]["mode"] = name
        print(format_report(reports[name]), flush=True)
        if args.fvcore:
            print(format_fvcore(reports[name]), flush=True)
        if args.train:
            reports[name]["training"] = benchmark_training(mode_cfg(cfg, precision, compile_), device,
                                                           args.train_batch, args.runs, peaks)
            print(format_training(reports[name]["training"]), flush=True)
    report = reports["run"] if not args.modes else dict(reports[args.modes[0]], modes=reports)
    if args.modes and len(args.modes) > 1:
        print(format_modes(reports), flush=True)
    if args.sweep:
        print("sweep (time and peak memory per image):")
        report["sweep"] = sweep(mode_cfg(cfg, args.precision, True if args.compile else None), device,
                                args.sweep_classes, args.sweep_sizes, args.runs, args.classes, args.sweep_chunk)
    write_json(args.json, report)
    return 0


def write_json(path: str, report: dict) -> None:
    """``report`` to ``path`` (nothing when ""), non-finite floats as null."""
    if path:
        with open(path, "w") as f:
            json.dump(report, f, indent=1, default=lambda x: x if not isinstance(x, float) or math.isfinite(x)
                      else None)


if __name__ == "__main__":
    sys.exit(main())
