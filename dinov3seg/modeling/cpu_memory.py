"""CPU runs reuse freed buffers instead of returning them to the OS (``MODEL.REUSE_FREED_CPU_MEMORY``).

glibc's malloc serves each allocation above its mmap threshold (32 MiB at most) with a fresh ``mmap`` and unmaps
it again on ``free``. Eager PyTorch frees and allocates the model's large intermediates op by op (AnyUp's
5 x 128 x 384 x 384 maps, the head's class maps: 20-190 MB each), so every op that writes one first page-faults
it in, 4 KiB at a time: on a 2-core AMX Xeon a ReLU over 94 MB took 47 ms into a fresh buffer and 12 ms into a
reused one, and ``vitl_384`` spent a fifth of its CPU time so (docs/benchmarks.md). With mmap and heap trimming
off, freed buffers stay in malloc's heap and the next allocation of that size reuses them, as jemalloc and
tcmalloc do. The cost: the process keeps the heap of its peak working set until it exits.
"""
import ctypes
import logging
import platform
from typing import Optional, Tuple

__all__ = ["reuse_freed_cpu_memory"]

logger = logging.getLogger(__name__)

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_LARGEST_TRIM_THRESHOLD = 2**31 - 1  # an int: never trim

_outcome: Optional[Tuple[bool, str]] = None


def reuse_freed_cpu_memory() -> Tuple[bool, str]:
    """Set glibc's malloc to serve every allocation from its heap and never trim it (once per process).

    Returns (applied, reason); not applied where the C library is not glibc (macOS, musl), whose allocators
    keep their own settings."""
    global _outcome
    if _outcome is None:
        _outcome = _set_malloc_options()
        logger.info(f"dinov3seg CPU memory: {_outcome[1]}")
    return _outcome


def _set_malloc_options() -> Tuple[bool, str]:
    libc_name = platform.libc_ver()[0]
    if platform.system() != "Linux" or libc_name != "glibc":
        return False, (f"left as it is: the C library is {libc_name or 'not glibc'} on {platform.system()}, "
                       "where MODEL.REUSE_FREED_CPU_MEMORY has no effect")
    libc = ctypes.CDLL(None)  # the C library this process runs on
    if libc.mallopt(_M_MMAP_MAX, 0) != 1 or libc.mallopt(_M_TRIM_THRESHOLD, _LARGEST_TRIM_THRESHOLD) != 1:
        return False, "left as it is: glibc's mallopt refused the settings"
    return True, ("freed buffers are kept for reuse (glibc malloc: no mmap, no trimming; "
                  "MODEL.REUSE_FREED_CPU_MEMORY False turns this off)")
