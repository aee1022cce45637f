"""Run the Triton kernels on the CPU: TRITON_INTERPRET=1 must be set before they are decorated.

`triton.jit` picks interpreter or compiler when a kernel module is imported, so the variable is
set here, at collection, and any octavo_cuda kernel module imported earlier in this process
(another test collecting the backends' entry points, say) is dropped to be re-imported.
The compile-only tests run in subprocesses without the variable.

On a machine with a GPU, OCTAVO_TRITON_DEVICE=cuda runs the same kernel tests compiled on the
device instead (bf16 included).
"""
import os
import sys

DEVICE = os.environ.get("OCTAVO_TRITON_DEVICE", "cpu")
if DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"
    for _name in [m for m in sys.modules if m.startswith(("octavo_cuda.", "octavo_rocm."))]:
        del sys.modules[_name]

