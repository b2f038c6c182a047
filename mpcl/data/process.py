"""Process-wide settings of the data layer: the cores this process may use, and the C
allocator's handling of the large buffers batched augmentation frees on every batch."""

from __future__ import annotations

import os


def available_cpus() -> int:
    """Cores this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def keep_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 1 << 30,
                      large_from_heap: bool = True) -> bool:
    """glibc only, opt-in, process-wide: keep freed memory in the process instead of handing it
    back to the OS after every large tensor is freed.

    Eager CPU tensor code allocates and frees many MB-sized buffers per batch; glibc returns
    them to the OS (mmap/trim) and every new buffer then page-faults on first touch, which in
    VMs can cost as much as the arithmetic (the blur and the crop suffer most). Call once from
    a CPU training/benchmark entry point. Returns True if applied.
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold, m_mmap_max = -1, -3, -4
        ok = bool(libc.mallopt(m_mmap_threshold, int(mmap_threshold)))
        ok = bool(libc.mallopt(m_trim_threshold, int(trim_threshold))) and ok
        if large_from_heap:  # above the 32 MB mmap ceiling too (batches of large images)
            ok = bool(libc.mallopt(m_mmap_max, 0)) and ok
        return ok
    except (OSError, AttributeError):
        return False
