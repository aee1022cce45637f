"""Builds the backend's C++ kernels into octavo_cpu._C when the package is installed.

One build serves every x86-64 CPU: no -march flag; each ISA-specific file selects its target
with `#pragma GCC target`, and the code picks at run time what the CPU can run (AVX2 as
the floor for the quantized kernels; AVX-512 for attention and the fused layer ops; AMX
for bf16 attention). Install with `pip install --no-build-isolation` so the kernels are
compiled against the torch that will run them. OCTAVO_CPU_BUILD=0 installs the package
without them (the backend then runs plain torch): for an environment with another torch that
shares an editable checkout, whose in-place build it would otherwise replace.
"""
import glob
import os
import platform

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

CSRC = os.path.join("octavo_cpu", "csrc")

X86 = platform.machine().lower() in ("x86_64", "amd64")  # elsewhere the backend runs plain torch
BUILD = X86 and os.environ.get("OCTAVO_CPU_BUILD", "1") != "0"

setup(
    ext_modules=[
        CppExtension(
            "octavo_cpu._C",
            sorted(glob.glob(os.path.join(CSRC, "*.cpp"))),
            # -g0 undoes the -g of Python's build flags: a quarter less compile time, 1.3 MB instead of 33.
            extra_compile_args=["-O3", "-g0", "-std=c++20", "-fopenmp", "-fvisibility=hidden"],
            extra_link_args=["-fopenmp"],
            depends=sorted(glob.glob(os.path.join(CSRC, "*.h")) + glob.glob(os.path.join(CSRC, "*.inc"))),
        )
    ] if BUILD else [],
    cmdclass={"build_ext": BuildExtension},
)
