"""Compile-only: every kernel builds for sm_80 and sm_90 (PTX + cubin), no GPU needed.

Runs `python -m octavo_cuda.aot` in a subprocess: compilation needs real `triton.jit` kernels,
and this test process interprets them (TRITON_INTERPRET=1). A fresh Triton cache makes
sure the kernels are compiled here, not read back from an earlier run.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="compile-only tests need triton (pip install triton==3.7.1)")

KERNELS = {"reshape_and_cache", "attention", "rms_norm", "rotary"}


def run_aot(tmp_path: Path, *args: str) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")
    proc = subprocess.run([sys.executable, "-m", "octavo_cuda.aot", *args], env=env, capture_output=True,
                          text=True, timeout=600)
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    failures = [r for r in rows if not r["ok"]]
    assert not failures and proc.returncode == 0, (
        f"aot exit {proc.returncode}\nfailures: {json.dumps(failures, indent=1)}\nstderr:\n{proc.stderr[-4000:]}")
    return rows


def test_ptxas_ships_with_triton():
    import triton
    from triton import knobs

    ptxas = knobs.nvidia.ptxas
    if os.environ.get("TRITON_PTXAS_PATH"):
        pytest.skip(f"TRITON_PTXAS_PATH overrides the bundled ptxas ({ptxas.path})")
    assert Path(ptxas.path).resolve().is_relative_to(Path(triton.__file__).parent.resolve()), ptxas.path
    assert ptxas.version  # it runs


def test_every_kernel_compiles_for_sm80_and_sm90(tmp_path):
    rows = run_aot(tmp_path, "--target", "cuda:80", "--target", "cuda:90")
    for target in ("cuda:80", "cuda:90"):
        built = {r["kernel"].split("/")[0] for r in rows if r["target"] == target}
        assert built == KERNELS, f"{target}: compiled {built}, expected {KERNELS}"
    assert all(r["binary"] == "cubin" and r["binary_bytes"] > 0 and r["text_bytes"] > 0 for r in rows)
    slowest = max(rows, key=lambda r: r["seconds"])
    print(f"{len(rows)} CUDA builds, slowest {slowest['kernel']} on {slowest['target']}: {slowest['seconds']} s")
