"""MODEL.REUSE_FREED_CPU_MEMORY: glibc's malloc keeps large freed buffers, so they are not page-faulted in again."""
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dinov3seg.modeling import cpu_memory, precision

from test_precision import tiny_model

REPO = Path(__file__).resolve().parents[1]
GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Minor page faults of writing a fresh 64 MiB tensor five times, before and after the setting (own process:
# the setting is process-wide and cannot be undone).
FAULTS = textwrap.dedent("""
    import resource, torch
    from dinov3seg.modeling.cpu_memory import reuse_freed_cpu_memory

    def faults():
        for _ in range(3):  # warm: the heap grows to hold such a buffer (once or twice)
            torch.empty(16 << 20).fill_(1.0)
        start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(5):
            torch.empty(16 << 20).fill_(1.0)
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start

    before = faults()
    applied, _ = reuse_freed_cpu_memory()
    print(before, faults(), applied)
""")


@pytest.mark.skipif(not GLIBC, reason="the setting is glibc's malloc (Linux); other C libraries are left alone")
def test_freed_buffers_are_reused_instead_of_faulted_in_again():
    out = subprocess.run([sys.executable, "-c", FAULTS], cwd=REPO, capture_output=True, text=True, check=True)
    before, after, applied = out.stdout.split()
    pages = 5 * (64 << 20) // 4096  # 81,920 pages of 4 KiB were written
    assert applied == "True"
    assert int(before) > pages // 2, out.stdout  # glibc's default: each fresh buffer is a new mmap
    assert int(after) < pages // 4, out.stdout  # reused: at most one more growth of the heap


def test_not_glibc_is_reported_and_left_alone(monkeypatch):
    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))
    cpu_memory._glibc.cache_clear()
    try:
        applied, reason = cpu_memory._set_malloc_options()
        assert not applied and "no effect" in reason and "Darwin" in reason
        assert cpu_memory.malloc_bytes_in_use() is None
    finally:
        cpu_memory._glibc.cache_clear()


@pytest.mark.skipif(not GLIBC, reason="mallinfo2 is glibc's")
def test_malloc_bytes_in_use_follows_allocations():
    import torch

    before = cpu_memory.malloc_bytes_in_use()
    buffer = torch.ones(16 << 20)  # 64 MiB
    during = cpu_memory.malloc_bytes_in_use()
    del buffer
    after = cpu_memory.malloc_bytes_in_use()
    assert during - before >= 64 << 20 and during - after >= 64 << 20, (before, during, after)


@pytest.mark.parametrize("setting", [True, False])
def test_first_cpu_run_sets_the_allocator_when_configured(monkeypatch, setting):
    calls = []
    monkeypatch.setattr(precision, "reuse_freed_cpu_memory", lambda: calls.append(1) or (True, "set"))
    model = tiny_model("MODEL.REUSE_FREED_CPU_MEMORY", str(setting)).eval()
    assert model.reuse_freed_cpu_memory is setting
    model.picked_precision()
    model.picked_precision()
    assert calls == ([1] if setting else [])
