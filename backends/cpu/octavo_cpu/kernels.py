"""The backend's C++ kernels, compiled on first use for this CPU (cached by torch).

If the toolchain is missing the backend falls back to its plain-torch path and says so once.
"""
from __future__ import annotations

import functools
import logging
import os

logger = logging.getLogger("octavo")
_SOURCE = os.path.join(os.path.dirname(__file__), "csrc", "paged_decode.cpp")


@functools.cache
def native():
    """The compiled module, or None (OCTAVO_CPU_KERNELS=0 forces the torch path)."""
    if os.environ.get("OCTAVO_CPU_KERNELS", "1") == "0":
        return None
    try:
        from torch.utils.cpp_extension import load

        return load("octavo_cpu_kernels", [_SOURCE], extra_cflags=["-O3", "-march=native", "-fopenmp"],
                    extra_ldflags=["-fopenmp"], verbose=False)
    except Exception as exc:  # no compiler or ninja: still correct, just slower
        logger.warning("octavo-cpu: C++ kernels unavailable (%s); using the torch attention path", exc)
        return None
