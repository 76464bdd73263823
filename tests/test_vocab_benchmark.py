"""The vocabulary benchmark runs (head mode, in-process, tiny sizes) and its table prints."""
import argparse

import torch

from dinov3seg.tools import vocab_benchmark


def test_head_worker_runs_and_measures():
    args = argparse.Namespace(config_file="configs/quickstart.yaml", opts=[], pad_len=None, device="cpu", views=2)
    for chunk in (0, 2):
        r = vocab_benchmark.run_head(args, num_classes=5, chunk=chunk)
        assert r["views"] == 2 and r["seconds"] > 0 and r["peak"] >= 0


def test_measure_counts_cpu_allocations():
    seconds, peak = vocab_benchmark.measure(lambda: torch.ones(64, 2**20).sum(), torch.device("cpu"))
    assert seconds > 0 and peak >= 200 * 2**20  # the 256 MiB tensor shows up in the peak
