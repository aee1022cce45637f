"""Session-wide test setup, loaded before any test module.

The CUDA/ROCm backends' Triton kernels run under Triton's interpreter on CPU-only machines.
`triton.jit` chooses interpreter or compiler when a kernel module is imported, and any test
may import one first (listing the installed backends does), so the variable is set here.
Compile-only tests run in subprocesses without it. On a GPU machine,
OCTAVO_TRITON_DEVICE=cuda runs the same kernel tests compiled on the device.
"""
import os

import pytest

if os.environ.get("OCTAVO_TRITON_DEVICE", "cpu") == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"


@pytest.fixture(scope="session")
def smollm2_gguf() -> str:
    """The embedded default model's GGUF (SmolLM2-135M-Instruct, Q4_1, from PyPI)."""
    from octavo.loader.gguf import find_default_model

    try:
        return find_default_model()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
