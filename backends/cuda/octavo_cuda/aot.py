"""Compile every kernel for real GPU targets without a GPU (CI's proof that they build).

The launch plans are built by the same wrapper code a real launch uses, from `meta` tensors,
so the signature, constexprs and warps compiled here are the ones production would compile.

    python -m octavo_cuda.aot --target cuda:80 --target cuda:90
    python -m octavo_cuda.aot --target hip:gfx942 --launch rocm

Must run without TRITON_INTERPRET (interpreted kernels cannot be compiled). Prints one JSON
line per kernel variant and target; exits 1 if any failed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator

import torch

from octavo_cuda.launch import CUDA_LAUNCH, ROCM_LAUNCH, Launch, LaunchConfig

# Shared memory a block may use (bytes): sm_80 163 KiB, sm_90 227 KiB, AMD CDNA LDS 64 KiB.
SHARED_LIMITS = {("cuda", 80): 166912, ("cuda", 90): 232448, ("hip", "gfx90a"): 65536, ("hip", "gfx942"): 65536}


def _meta(*shape: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device="meta")


def variants(launch: LaunchConfig) -> Iterator[tuple[str, Callable[[], Launch]]]:
    """(name, plan builder) for a representative set of every kernel's specializations."""
    from octavo_cuda.kv_cache import reshape_and_cache_launch
    from octavo_cuda.paged_attention import unified_attention_launch
    from octavo_cuda.rms_norm import rms_norm_launch
    from octavo_cuda.rotary import rotary_launch

    def kv_write(t, kvh, d, bs, dtype, cache_dtype):
        def build():
            cache = _meta(2, 64, bs, kvh, d, dtype=cache_dtype)
            return reshape_and_cache_launch(_meta(t, kvh, d, dtype=dtype), _meta(t, kvh, d, dtype=dtype),
                                            cache[0], cache[1], _meta(t, dtype=torch.int64), launch)
        return build

    def attention(h, kvh, d, bs, dtype, window=None, softcap=None, kv_dtype=None):
        def build():
            t, b = 256, 8
            cache = _meta(2, 64, bs, kvh, d, dtype=kv_dtype or dtype)
            q = _meta(t, h, d, dtype=dtype)
            return unified_attention_launch(
                torch.empty_like(q), q, cache[0], cache[1], _meta(b, 16, dtype=torch.int32),
                _meta(b, dtype=torch.int32), _meta(b + 1, dtype=torch.int32), num_seqs=b, scale=d ** -0.5,
                sliding_window=window, softcap=softcap, launch=launch)
        return build

    def norm(n, dtype, residual, gemma):
        def build():
            x = _meta(8, n, dtype=dtype)
            r = _meta(8, n, dtype=dtype) if residual else None
            return rms_norm_launch(x, _meta(n, dtype=dtype), 1e-6, torch.empty_like(x), r,
                                   torch.empty_like(x) if residual else None, gemma, launch)
        return build

    def rope(h, kvh, d, rot, dtype, neox):
        def build():
            return rotary_launch(_meta(8, dtype=torch.int64), _meta(8, h, d, dtype=dtype),
                                 _meta(8, kvh, d, dtype=dtype), _meta(4096, rot, dtype=torch.float32), neox, launch)
        return build

    yield "reshape_and_cache/bf16/bs16/kvh8/d128", kv_write(16, 8, 128, 16, torch.bfloat16, torch.bfloat16)
    yield "reshape_and_cache/fp32->fp16/bs32/kvh2/d80", kv_write(16, 2, 80, 32, torch.float32, torch.float16)
    yield "attention/bf16/bs16/gqa4/d128", attention(32, 8, 128, 16, torch.bfloat16)
    yield "attention/fp16/bs32/mha/d64/window+softcap", attention(8, 8, 64, 32, torch.float16, 4096, 50.0)
    yield "attention/fp32/bs16/gqa3/d80", attention(12, 4, 80, 16, torch.float32)
    yield "attention/bf16/bs32/gqa32/d256/window", attention(32, 1, 256, 32, torch.bfloat16, 512)
    yield "attention/fp16-q/fp32-kv/bs16/gqa2/d64", attention(4, 2, 64, 16, torch.float16, kv_dtype=torch.float32)
    yield "rms_norm/bf16/residual/n4096", norm(4096, torch.bfloat16, True, False)
    yield "rms_norm/fp16/gemma/n2304", norm(2304, torch.float16, False, True)
    yield "rms_norm/fp32/n896", norm(896, torch.float32, False, False)
    yield "rotary/bf16/neox/h32/kvh8/d128", rope(32, 8, 128, 128, torch.bfloat16, True)
    yield "rotary/bf16/neox/h9/kvh3/d64", rope(9, 3, 64, 64, torch.bfloat16, True)  # SmolLM2-135M, heads padded
    yield "rotary/fp16/gptj/partial64/d128", rope(16, 2, 128, 64, torch.float16, False)


def parse_target(spec: str):
    from triton.backends.compiler import GPUTarget

    backend, _, arch = spec.partition(":")
    if backend == "cuda":
        return GPUTarget("cuda", int(arch), 32)
    if backend == "hip":
        return GPUTarget("hip", arch, 64)
    raise ValueError(f"target must be cuda:<sm> or hip:<gfx>, got {spec!r}")


def compile_launch(plan: Launch, target) -> dict:
    import triton
    from triton.compiler import ASTSource

    src = ASTSource(plan.kernel, plan.signature(), constexprs=dict(plan.constexprs))
    t0 = time.perf_counter()
    kernel = triton.compile(src, target=target, options=plan.options())
    binary = "cubin" if target.backend == "cuda" else "hsaco"
    text = "ptx" if target.backend == "cuda" else "amdgcn"
    return {"seconds": round(time.perf_counter() - t0, 3), "binary": binary,
            "binary_bytes": len(kernel.asm.get(binary, b"")), "text_bytes": len(kernel.asm.get(text, "")),
            "shared": int(kernel.metadata.shared), "num_warps": int(kernel.metadata.num_warps)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", action="append", required=True, help="cuda:80, cuda:90, hip:gfx90a, hip:gfx942")
    ap.add_argument("--launch", choices=["cuda", "rocm"], default=None,
                    help="launch parameters (default: by target backend)")
    ap.add_argument("--only", default="", help="substring filter on variant names")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("unset TRITON_INTERPRET: interpreted kernels cannot be compiled", file=sys.stderr)
        return 2
    failed = 0
    for spec in args.target:
        target = parse_target(spec)
        launch = {"cuda": CUDA_LAUNCH, "rocm": ROCM_LAUNCH}[args.launch or ("rocm" if target.backend == "hip" else "cuda")]
        limit = SHARED_LIMITS.get((target.backend, target.arch))
        for name, build in variants(launch):
            if args.only not in name:
                continue
            row = {"target": spec, "kernel": name}
            try:
                row.update(compile_launch(build(), target))
                if not row["binary_bytes"]:
                    raise RuntimeError("no binary produced")
                if limit is not None and row["shared"] > limit:
                    raise RuntimeError(f"needs {row['shared']} bytes of shared memory, target has {limit}")
                row["ok"] = True
            except Exception as e:  # report every failure, not just the first
                row.update(ok=False, error=f"{type(e).__name__}: {e}"[:2000])
                failed += 1
            print(json.dumps(row), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
