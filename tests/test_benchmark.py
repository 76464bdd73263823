"""Smoke test of tools/benchmark on the tiny quickstart config (the benchmark itself is not a timed test)."""
import contextlib
import io
import json

import pytest
import torch
import torch.nn.functional as F

from dinov3seg.tools import benchmark

TINY = ["--config-file", "configs/quickstart.yaml", "--classes", "3", "--image-size", "96", "128", "--runs", "1",
        "--peak-seconds", "0.01", "--bandwidth-mib", "16"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "report.json"
    assert benchmark.main(TINY + ["--traffic", "--json", str(out)]) == 0
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def modes(tmp_path_factory):
    """fp32 and forced bf16 in one run (bf16 is slow on CPUs without AMX / AVX512-BF16: tiny sizes)."""
    out = tmp_path_factory.mktemp("bench") / "modes.json"
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert benchmark.main(TINY + ["--image-size", "64", "64", "--modes", "fp32", "bf16", "--traffic",
                                      "--json", str(out)]) == 0
    return dict(json.loads(out.read_text())["modes"], printed=printed.getvalue())


def test_json_has_the_issue_keys(report):
    for key in ("params_total", "gflops_per_image", "seconds_per_image", "peak_memory_bytes", "components"):
        assert key in report
    assert set(report["components"]) == set(benchmark.COMPONENT_NAMES)
    for row in report["components"].values():
        assert {"params", "params_trainable", "gflops_per_image", "seconds_per_image"} <= set(row)
    assert report["setting"]["views"] == 5  # canvas 192, view 128, stride 64: 2x2 windows + 1 global
    assert report["seconds_per_image"] > 0 and report["peak_memory_bytes"] >= 0
    assert report["vocabulary_encoding"]["classes"] == 3
    # only contractions are counted, each multiply-add as 2 FLOPs, so the fvcore-style MAC count is exactly half
    assert report["gmacs_per_image"] == pytest.approx(report["gflops_per_image"] / 2, rel=1e-12)


def test_component_figures_sum_to_the_total(report):
    rows = report["components"].values()
    assert sum(r["gflops_per_image"] for r in rows) == pytest.approx(report["gflops_per_image"], rel=1e-9)
    assert sum(r["params"] for r in rows) <= report["params_total"]  # "other" (logit_scale) has no row
    assert report["params_total"] - sum(r["params"] for r in rows) <= 1
    assert sum(r["seconds_per_image"] for r in rows) == pytest.approx(report["seconds_per_image"], rel=1e-6)
    flops = {k: r["gflops_per_image"] for k, r in report["components"].items()}
    assert flops["text_tower"] == 0  # cached
    for name in ("dinov3_backbone", "dinotxt_vision_head", "anyup", "sam", "head", "decoder"):
        assert flops[name] > 0, name


def test_efficiency_against_the_machine_peak(report):
    peaks = report["machine_peaks"]
    assert set(peaks) == {"fp32", "bf16", "memory"}
    assert all(peaks[p]["gflops_per_s"] > 0 and peaks[p]["n"] >= 256 for p in ("fp32", "bf16"))
    assert peaks["memory"]["gbytes_per_s"] > 0 and peaks["memory"]["mib"] == 16
    assert report["precision"] == "fp32" and "PRECISION=fp32 (forced)" in report["precision_reason"]  # quickstart
    for name, row in report["components"].items():
        if row["seconds_per_image"] > 0:
            assert row["gflops_per_s"] == pytest.approx(row["gflops_per_image"] / row["seconds_per_image"])
            assert row["share_of_peak"] == pytest.approx(row["gflops_per_s"] / peaks["fp32"]["gflops_per_s"])
    assert report["share_of_peak"] == pytest.approx(report["gflops_per_s"] / peaks["fp32"]["gflops_per_s"])


def test_modes_side_by_side(modes):
    assert modes["fp32"]["precision"] == "fp32" and modes["bf16"]["precision"] == "bf16"
    # each mode counts in its own precision (bf16 under autocast): the same products
    for name in benchmark.COMPONENT_NAMES:
        assert modes["bf16"]["components"][name]["gflops_per_image"] == pytest.approx(
            modes["fp32"]["components"][name]["gflops_per_image"], rel=1e-9), name
    assert "modes side by side" in modes["printed"] and "op-by-op" in modes["printed"]


def test_flop_counter_counts_cpu_attention():
    q = torch.randn(2, 3, 10, 8)
    with benchmark.flop_counter() as counter:
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
    assert counter.get_total_flops() == 2 * (2 * 2 * 3 * 10 * 10 * 8)  # two matmuls, multiply-add = 2


def test_probe_restores_the_model():
    model = torch.nn.Module()
    model.sem_seg_head = torch.nn.Linear(2, 2)
    probe = benchmark.ComponentProbe(model)
    assert "forward" in vars(model.sem_seg_head)
    model.sem_seg_head(torch.ones(1, 2))
    assert probe.seconds["head"] > 0
    probe.close()
    assert "forward" not in vars(model.sem_seg_head)


def test_sweep_and_params_only(tmp_path, capsys):
    out = tmp_path / "sweep.json"
    assert benchmark.main(TINY + ["--sweep", "--sweep-classes", "2", "5", "--sweep-sizes", "128",
                                  "--sweep-chunk", "2", "--json", str(out)]) == 0
    sweep = json.loads(out.read_text())["sweep"]
    assert [r["classes"] for r in sweep["classes"]] == [2, 5]
    assert sweep["class_chunk_size"] == 2 and sweep["image_short_side"][0]["views"] >= 1
    assert benchmark.main(["--config-file", "configs/quickstart.yaml", "--params-only"]) == 0
    assert "paper: ~1.1 B" in capsys.readouterr().out


def test_training_iteration_and_fvcore_count(tmp_path, capsys):
    """--train times training iterations (forward + backward FLOPs counted); --fvcore puts fvcore's count, in its
    unit (multiply-add = 1), beside ours per component and lists what it skipped."""
    out = tmp_path / "train.json"
    assert benchmark.main(TINY + ["--train", "--train-batch", "1", "--fvcore", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    train = report["training"]
    assert train["batch"] == 1 and train["crop"] == 128 and train["seconds_per_iter"] > 0
    assert train["share_of_peak"] == pytest.approx(train["gflops_per_s"] / report["machine_peaks"]["fp32"]["gflops_per_s"])
    assert train["gflops_per_iter"] > 0 and train["peak_memory_bytes"] > 0 and train["precision"] == "fp32"
    fv = report["fvcore"]
    assert sum(fv["components"].values()) == pytest.approx(fv["gmacs_per_image"], rel=1e-9)
    assert "aten::scaled_dot_product_attention" in fv["skipped_ops"]
    # the same products in half the unit, give or take the norms, pooling and resizing fvcore adds and the
    # attention it skips
    for name in ("sam", "head", "decoder"):
        assert 0.8 < fv["components"][name] / (report["components"][name]["gflops_per_image"] / 2) < 1.3, name
    printed = capsys.readouterr().out
    assert "fvcore FlopCountAnalysis" in printed and "training: batch 1" in printed


def test_traffic_counter_counts_each_region_once_per_op():
    x, w, b = torch.randn(4, 8), torch.randn(16, 8), torch.randn(16)
    with torch.no_grad(), benchmark.TrafficCounter() as counter:
        F.linear(x, w, b)  # t(w) is a view; addmm reads bias, x, w and writes the 4 x 16 output
    assert counter.by_operator == {"addmm": 4 * (16 + 4 * 8 + 16 * 8 + 4 * 16)}
    y, dst = torch.randn(4, 8), torch.empty(4, 8)
    with torch.no_grad(), benchmark.TrafficCounter() as counter:
        x.view(32), x.t(), x[1:], x.permute(1, 0), x.unsqueeze(0).expand(2, 4, 8)  # views: nothing moves
        x.relu_()  # in place: x once
        x * x  # x read once, the product written
        dst.copy_(y)  # source and destination
        x + torch.ones(8).expand(4, 8)  # a broadcast dimension counts once (the 8 ones, not 32)
    assert counter.by_operator == {"relu_": 128, "mul": 256, "copy_": 256, "add": 128 + 32 + 128, "ones": 32}
    assert counter.get_total_bytes() == sum(counter.by_operator.values())


def test_traffic_counts_the_dtype_autocast_runs_in():
    x, w, b = torch.randn(4, 8), torch.randn(16, 8), torch.randn(16)
    fp32 = 4 * (16 + 4 * 8 + 16 * 8 + 4 * 16)
    with torch.no_grad(), benchmark.TrafficCounter() as counter:
        F.linear(x.bfloat16(), w.bfloat16(), b.bfloat16())
    assert counter.by_operator["addmm"] == fp32 // 2
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), benchmark.TrafficCounter() as counter:
        F.linear(x, w, b)  # autocast casts the three inputs (read fp32, write bf16), then multiplies in bf16
    assert counter.by_operator == {"_to_copy": (4 + 2) * (4 * 8 + 16 * 8 + 16), "addmm": fp32 // 2}


def test_op_by_op_roofline_and_exclusive_bytes_per_component():
    """A product is charged max(bytes, FLOPs / balance); the head's bytes exclude its decoder's."""
    x, w = torch.randn(4, 8), torch.randn(16, 8)
    moved = 4 * (4 * 8 + 16 * 8 + 4 * 16)
    for balance, expected in ((0.5, 2 * 4 * 8 * 16 / 0.5), (4.0, moved)):
        with torch.no_grad(), benchmark.flop_counter() as flops, \
                benchmark.TrafficCounter(flops.get_total_flops, balance) as counter:
            x @ w.t()
        assert counter.get_total_bytes() == moved and counter.get_op_roofline_bytes() == expected

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj, self.decoder = torch.nn.Linear(8, 8), torch.nn.Linear(8, 4)

        def forward(self, x):
            return self.decoder(self.proj(x))

    model = torch.nn.Module()
    model.sem_seg_head = Head()
    probe = benchmark.ComponentProbe(model)
    x = torch.ones(2, 8)
    with torch.no_grad(), benchmark.TrafficCounter() as counter:
        probe.meters = {"bytes": counter.get_total_bytes}
        probe.reset()
        model.sem_seg_head(x)
    probe.close()
    assert probe.counts["bytes"]["head"] == 4 * (2 * 8 + 8 * 8 + 8 + 2 * 8)
    assert probe.counts["bytes"]["decoder"] == 4 * (2 * 8 + 4 * 8 + 4 + 2 * 4)


def test_traffic_and_roofline_bounds_per_component(report):
    traffic, peaks = report["traffic"], report["machine_peaks"]
    rows = traffic["components"]
    assert set(rows) == set(benchmark.COMPONENT_NAMES)
    assert sum(r["gbytes_per_image"] for r in rows.values()) == pytest.approx(traffic["total"]["gbytes_per_image"])
    for name, row in list(rows.items()) + [("total", traffic["total"])]:
        flops = report["components"][name]["gflops_per_image"] if name != "total" else report["gflops_per_image"]
        assert row["gflops_per_image"] == pytest.approx(flops, rel=1e-12), name
        if flops == 0:
            continue
        assert row["gbytes_per_image"] > 0 and row["flop_per_byte"] == pytest.approx(flops / row["gbytes_per_image"])
        compute = flops / peaks["fp32"]["gflops_per_s"]
        memory = row["gbytes_per_image"] / peaks["memory"]["gbytes_per_s"]
        assert row["roofline_share_of_peak"] == pytest.approx(compute / max(compute, memory)), name
        # the ops run one after the other, so the op-by-op floor is at least the larger of the two floors
        assert row["op_by_op_floor_seconds"] >= max(compute, memory) * (1 - 1e-9), name
        assert 0 < row["op_by_op_share_of_peak"] <= row["roofline_share_of_peak"] <= 1, name
    assert rows["text_tower"]["gbytes_per_image"] == 0 and rows["text_tower"]["roofline_share_of_peak"] is None
    assert rows["glue"]["gbytes_per_image"] > 0 and rows["glue"]["roofline_share_of_peak"] == 0
    # views move nothing: no operator that torch marks as a view, nor any non-aten op, was charged
    for op in traffic["by_operator_gbytes"]:
        packet = getattr(torch.ops.aten, op)
        assert not any(getattr(packet, overload).is_view for overload in packet.overloads()), op


def test_bf16_moves_fewer_bytes(modes):
    """About half in the parts whose norms run in the input dtype (precision.norm_in_input_dtype); the casts are
    added. (SAM and the backbone keep fp32 norms, whose casts to fp32 and back eat most of the saving.)"""
    for name in ("anyup", "head", "decoder"):
        fp32, bf16 = (modes[m]["traffic"]["components"][name]["gbytes_per_image"] for m in ("fp32", "bf16"))
        assert 0.4 < bf16 / fp32 < 0.7, name
    assert modes["bf16"]["traffic"]["total"]["gbytes_per_image"] < modes["fp32"]["traffic"]["total"]["gbytes_per_image"]


def test_fake_tensor_count_matches_the_real_pass(modes, tmp_path):
    """--counts-only counts on fake tensors (no compute) what the real counted pass counts, in both precisions."""
    out = tmp_path / "counts.json"
    assert benchmark.main(TINY + ["--image-size", "64", "64", "--modes", "fp32", "bf16", "--counts-only",
                                  "--json", str(out)]) == 0
    fake = json.loads(out.read_text())["modes"]
    for mode in ("fp32", "bf16"):
        assert fake[mode]["precision"] == mode and fake[mode]["setting"]["views"] == modes[mode]["setting"]["views"]
        for name in benchmark.COMPONENT_NAMES:
            counted, real = fake[mode]["traffic"]["components"][name], modes[mode]["traffic"]["components"][name]
            assert counted["gflops_per_image"] == pytest.approx(real["gflops_per_image"], rel=1e-12), (mode, name)
            # meta kernels give mixed-dtype norms bf16 statistics where the CPU kernel writes fp32; the real pass
            # also clones the cached class embeddings once (made under inference_mode)
            assert counted["gbytes_per_image"] == pytest.approx(real["gbytes_per_image"], rel=5e-3), (mode, name)
