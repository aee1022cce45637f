"""Keep freed memory in the process: glibc's defaults cost steps rounds of page faults.

glibc serves big blocks with mmap (it raises that threshold as blocks are freed, but only up
to 32 MiB) and trims the heap top once enough is free there, so a step's fresh activations
(a decode step's [64, vocab] fp32 logits are 12 MiB; prefill chunks of bigger models need far
more) keep coming back as new pages the kernel must fault in and zero. Measured here: the
logits' `.float()` took 3.6 ms per decode step, and the whole 64 x 256/128 SmolLM2 run went
from 15.0 to 13.3 s with this. Serving big blocks from the heap and not trimming it makes a
step reuse the last step's memory (what vLLM gets on the CPU by preloading tcmalloc).
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
