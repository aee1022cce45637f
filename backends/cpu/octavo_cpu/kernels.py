"""The backend's C++ kernels, compiled on first use for this CPU and cached by torch.

They need AVX-512 and a C++20 compiler. Without either the backend runs its plain-torch
path and says so once; OCTAVO_CPU_KERNELS=0 forces that path.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os

from octavo_cpu import cpu_flags

logger = logging.getLogger("octavo")
_CSRC = os.path.join(os.path.dirname(__file__), "csrc")
_SOURCES = [os.path.join(_CSRC, name) for name in ("bindings.cpp", "paged_attention.cpp", "layer_ops.cpp")]
_HEADERS = [os.path.join(_CSRC, "vec.h")]


@functools.cache
def native():
    """The compiled module, or None."""
    if os.environ.get("OCTAVO_CPU_KERNELS", "1") == "0":
        return None
    if not {"avx512f", "avx512bw", "avx512vl"} <= cpu_flags():
        logger.info("octavo-cpu: no AVX-512 on this CPU; using the torch attention path")
        return None
    try:
        from torch.utils.cpp_extension import load

        flags = ["-O3", "-march=native", "-std=c++20", "-fopenmp", f"-DOCTAVO_HEADERS={_headers_hash()}"]
        return load("octavo_cpu_kernels", _SOURCES, extra_cflags=flags, extra_ldflags=["-fopenmp"], verbose=False)
    except Exception as exc:  # no compiler or ninja: still correct, just slower
        logger.warning("octavo-cpu: C++ kernels unavailable (%s); using the torch attention path", exc)
        return None



def _headers_hash() -> str:
    """torch rebuilds when the sources or flags change, not the headers: this flag carries them."""
    digest = hashlib.sha1()
    for path in _HEADERS:
        with open(path, "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()[:12]
