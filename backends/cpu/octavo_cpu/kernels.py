"""The backend's C++ kernels (csrc/), compiled by pip when octavo-cpu is installed (setup.py).

One build runs on every x86-64 CPU; what runs is chosen by the CPU's features at run time:
- `native()`: the module, or None where it is not built (not x86-64, or installed without
  compiling) or OCTAVO_CPU_KERNELS=0; the backend then runs plain torch and says why once.
- `avx512()`: the module where the CPU has AVX-512 (paged attention, fused layer ops).
- `quantized()`: the module where the CPU has at least AVX2 (GGUF quantized linears; the
  module picks AVX-512 VNNI or AVX2 itself).
- `bf16_panels()`: the module where the CPU has AVX512-BF16 but no AMX (bf16 linears in our
  panel layout; with AMX, oneDNN multiplies with its tiles, which the panels do not use).
"""
from __future__ import annotations

import functools
import logging
import os

from octavo_cpu import cpu_flags

logger = logging.getLogger("octavo")
_REBUILD = "pip install --no-build-isolation --force-reinstall --no-deps octavo-cpu (or -e backends/cpu)"


@functools.cache
def native():
    if os.environ.get("OCTAVO_CPU_KERNELS", "1") == "0":
        return None
    try:
        from octavo_cpu import _C
    except ImportError as exc:
        logger.warning("octavo-cpu: C++ kernels not built (%s); using plain torch. To build: %s", exc, _REBUILD)
        return None
    return _C


@functools.cache
def avx512():
    if not {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= cpu_flags():
        logger.info("octavo-cpu: no AVX-512 on this CPU; attention and layer ops run plain torch")
        return None
    return native()


@functools.cache
def quantized():
    module = native()
    if module is None or module.quant_isa() == "none":
        return None
    return module


@functools.cache
def bf16_panels():
    if "avx512_bf16" not in cpu_flags() or "amx_bf16" in cpu_flags():
        return None
    return avx512()
