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
import functools
import logging
import platform
from typing import Optional, Tuple

__all__ = ["malloc_bytes_in_use", "reuse_freed_cpu_memory"]

logger = logging.getLogger(__name__)

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_LARGEST_TRIM_THRESHOLD = 2**31 - 1  # an int: never trim

_outcome: Optional[Tuple[bool, str]] = None


@functools.lru_cache(maxsize=None)
def _glibc() -> Optional[ctypes.CDLL]:
    """The C library this process runs on, when it is glibc (Linux); else None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    libc = ctypes.CDLL(None)
    if hasattr(libc, "mallinfo2"):  # glibc >= 2.33
        libc.mallinfo2.restype = _MallInfo2
    return libc


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def malloc_bytes_in_use() -> Optional[int]:
    """Bytes glibc's malloc has handed out and not taken back (heap chunks + mmapped ones, ``mallinfo2``), or
    None without glibc >= 2.33. Unlike the resident set, it falls when buffers are freed into a kept heap."""
    libc = _glibc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None
    info = libc.mallinfo2()
    return info.uordblks + info.hblkhd


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
    libc = _glibc()
    if libc is None:
        return False, (f"left as it is: the C library is {platform.libc_ver()[0] or 'not glibc'} on "
                       f"{platform.system()}, where MODEL.REUSE_FREED_CPU_MEMORY has no effect")
    if libc.mallopt(_M_MMAP_MAX, 0) != 1 or libc.mallopt(_M_TRIM_THRESHOLD, _LARGEST_TRIM_THRESHOLD) != 1:
        return False, "left as it is: glibc's mallopt refused the settings"
    return True, ("freed buffers are kept for reuse (glibc malloc: no mmap, no trimming; "
                  "MODEL.REUSE_FREED_CPU_MEMORY False turns this off)")
