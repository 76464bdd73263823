"""Smoke test of tools/benchmark on the tiny quickstart config (the benchmark itself is not a timed test)."""
import json

import pytest
import torch

from dinov3seg.tools import benchmark

TINY = ["--config-file", "configs/quickstart.yaml", "--classes", "3", "--image-size", "96", "128", "--runs", "1",
        "--peak-seconds", "0.01"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "report.json"
    assert benchmark.main(TINY + ["--json", str(out)]) == 0
    return json.loads(out.read_text())


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
    assert set(peaks) == {"fp32", "bf16"} and all(p["gflops_per_s"] > 0 and p["n"] >= 256 for p in peaks.values())
    assert report["precision"] == "fp32" and "PRECISION=fp32 (forced)" in report["precision_reason"]  # quickstart
    for name, row in report["components"].items():
        if row["seconds_per_image"] > 0:
            assert row["gflops_per_s"] == pytest.approx(row["gflops_per_image"] / row["seconds_per_image"])
            assert row["share_of_peak"] == pytest.approx(row["gflops_per_s"] / peaks["fp32"]["gflops_per_s"])
    assert report["share_of_peak"] == pytest.approx(report["gflops_per_s"] / peaks["fp32"]["gflops_per_s"])


def test_modes_side_by_side(tmp_path, capsys):
    """fp32 and forced bf16 in one run (bf16 is slow on CPUs without AMX / AVX512-BF16: tiny sizes)."""
    out = tmp_path / "modes.json"
    assert benchmark.main(TINY + ["--image-size", "64", "64", "--modes", "fp32", "bf16", "--json", str(out)]) == 0
    modes = json.loads(out.read_text())["modes"]
    assert modes["fp32"]["precision"] == "fp32" and modes["bf16"]["precision"] == "bf16"
    assert modes["bf16"]["gflops_per_image"] == pytest.approx(modes["fp32"]["gflops_per_image"], rel=1e-9)
    assert "modes side by side" in capsys.readouterr().out


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
