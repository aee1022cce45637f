"""Keep freed memory in the process: glibc's defaults cost every step a round of page faults.

glibc serves blocks over 128 KiB-32 MiB with mmap and unmaps them when freed, so each step's
fresh activations (a decode step's [64, vocab] fp32 logits alone are 12 MiB, a prefill
chunk's MLP activations more) come back as new pages the kernel must fault in and zero:
~3 ms per step at 64 sequences. Serving them from the heap and not trimming it makes a step
reuse the last step's memory (what vLLM gets on the CPU by preloading tcmalloc).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

logger = logging.getLogger("octavo")
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters


@functools.cache
def keep_freed_memory() -> bool:
    """Once per process; False where the C library is not glibc (mallopt missing or refusing)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        ok = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1
    except (OSError, AttributeError, TypeError):
        ok = False
    if not ok:
        logger.info("octavo-cpu: could not tune malloc; steps pay page faults for fresh activations")
    return ok
