"""CPU memory behaviour for training loops."""

from __future__ import annotations

import ctypes
import ctypes.util
import platform


def keep_freed_memory() -> bool:
    """Keep freed blocks in the process heap (glibc): steady-state steps then reuse memory instead of faulting.

    By default glibc serves each large tensor with its own mmap and returns it to the OS when freed, so every
    training step faults in ~100 MB of fresh pages. On virtual machines a page fault can cost tens of
    microseconds, which then outweighs the arithmetic and varies from run to run; CUDA's caching allocator does the
    equivalent of this on GPUs. Returns whether the setting took effect.
    """
    name = ctypes.util.find_library("c")
    if platform.system() != "Linux" or not name:
        return False
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "mallopt"):
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
    # One heap (brk-grown, no per-thread arenas that shrink), no mmap for large blocks, and no trimming of the
    # heap's free top below 2 GiB (mallopt takes a C int: larger values would wrap).
    settings = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1))
    return all(libc.mallopt(option, value) == 1 for option, value in settings)


__all__ = ["keep_freed_memory"]
