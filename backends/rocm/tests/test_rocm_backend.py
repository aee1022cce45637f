"""RocmBackend: identity, availability, launch parameters, and octavo-cuda's kernels on AMD.

The kernels are octavo-cuda's (no copies); what ROCm changes is the launch (64-wide
wavefronts). Kernels run interpreted on the CPU (the root conftest.py) with the ROCm launch
parameters, and compile-only for gfx90a (MI200) and gfx942 (MI300) in a subprocess.
"""
import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton", reason="these tests run Triton kernels: pip install triton==3.7.1")

import octavo_rocm
from octavo.backend import AttentionSpec, Backend, BatchLayout
from octavo.config import ConfigError, EngineConfig
from octavo_cuda.attention import TritonAttention
from octavo_cuda.launch import ROCM_LAUNCH
from octavo_cuda.layer_ops import TritonLayerOps
from octavo_cuda.reference import attention_ref, make_paged_batch, reshape_and_cache_ref
from octavo_cuda import GpuOptions
from octavo_rocm import RocmBackend

DEVICE = torch.device(os.environ.get("OCTAVO_TRITON_DEVICE", "cpu"))
KERNELS = {"reshape_and_cache", "attention", "rms_norm", "rotary"}


def test_identity():
    assert issubclass(RocmBackend, Backend)
    assert RocmBackend.name == "rocm" and RocmBackend.priority == 100
    assert set(RocmBackend.supported_dtypes) == {torch.bfloat16, torch.float16, torch.float32}
    assert RocmBackend.supported_block_sizes == (16, 32)


def test_availability_here():
    av = RocmBackend.availability()
    if torch.version.hip and torch.cuda.is_available():
        assert av.ok, av.reason
        return
    assert not av.ok and "no ROCm device" in av.reason and torch.__version__ in av.reason, av.reason
    print("RocmBackend.availability():", av.reason)


def test_availability_reasons(monkeypatch):
    monkeypatch.setattr(torch.version, "hip", "6.4.1", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    reason = RocmBackend.availability().reason
    assert "torch.cuda.is_available() is False" in reason and "HIP 6.4.1" in reason
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert RocmBackend.availability().ok
    from octavo_cuda import CudaBackend

    assert not CudaBackend.availability().ok  # a HIP build is not CUDA


def test_entry_point_registered():
    eps = {ep.name: ep for ep in entry_points(group="octavo.backends")}
    assert "rocm" in eps, f"octavo-rocm not installed (pip install -e backends/rocm); found {sorted(eps)}"
    assert eps["rocm"].load() is RocmBackend


def test_reuses_cuda_kernels_without_copies():
    pkg = Path(octavo_rocm.__file__).parent
    for src in pkg.rglob("*.py"):
        assert "triton.jit" not in src.read_text(), f"{src} defines kernels; reuse octavo_cuda's"
    attn = RocmBackend().attention_backend()
    assert type(attn) is TritonAttention and attn.launch is ROCM_LAUNCH
    ops = RocmBackend().layer_ops()
    assert type(ops) is TritonLayerOps and ops.launch is ROCM_LAUNCH


def test_wavefront_64_launch_parameters():
    assert ROCM_LAUNCH.warp_size == 64
    assert ROCM_LAUNCH.attention_warps == 2  # 128 threads, as 4 warps of 32 on NVIDIA
    assert ROCM_LAUNCH.warps_for_elements(4096) == 8 and ROCM_LAUNCH.warps_for_elements(16) == 1
    assert ROCM_LAUNCH.warps_for_elements(1 << 20) == 16  # 1024 threads at most


def test_config_checks():
    backend = RocmBackend(GpuOptions(enforce_eager=True))
    cfg = EngineConfig()
    backend.check_and_update_config(cfg)
    assert cfg.block_size == 16 and backend.options.cuda_graph_sizes == []
    with pytest.raises(ConfigError, match="rocm supports block sizes"):
        RocmBackend().check_and_update_config(EngineConfig(block_size=8))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_attention_with_rocm_launch(dtype):
    requests = [(20, 13), (49, 1), (0, 9), (0, 1)]
    b = make_paged_batch(requests, num_heads=6, num_kv_heads=2, head_dim=32, block_size=32, dtype=dtype, seed=9)
    attn = RocmBackend().attention_backend()
    layout = BatchLayout(b.query_start_loc, b.seq_lens, b.block_tables, b.slot_mapping, max(b.query_lens),
                         int(b.seq_lens.max()), b.block_size)
    spec = AttentionSpec(num_heads=6, num_kv_heads=2, head_dim=32, scale=32 ** -0.5, sliding_window=20)
    kv = b.kv_cache.to(DEVICE)
    out = attn.forward(spec, b.q.to(DEVICE), b.k_new.to(DEVICE), b.v_new.to(DEVICE), kv,
                       attn.build_metadata(layout, DEVICE))
    expect = b.kv_cache.clone()
    reshape_and_cache_ref(b.k_new, b.v_new, expect[0], expect[1], b.slot_mapping)
    torch.testing.assert_close(kv.cpu(), expect, atol=0, rtol=0, equal_nan=True)
    ref = attention_ref(b.q, b.keys, b.values, b.query_lens, spec.scale, 20)
    tol = 2e-5 if dtype == torch.float32 else 2e-3
    torch.testing.assert_close(out.cpu().double(), ref, atol=tol, rtol=tol)


def test_every_kernel_compiles_for_gfx90a_and_gfx942(tmp_path):
    """AMDGCN + hsaco; Triton links in-process with its bundled LLD (no ld.lld needed)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")
    proc = subprocess.run([sys.executable, "-m", "octavo_cuda.aot", "--launch", "rocm",
                           "--target", "hip:gfx90a", "--target", "hip:gfx942"],
                          env=env, capture_output=True, text=True, timeout=600)
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    failures = [r for r in rows if not r["ok"]]
    assert not failures and proc.returncode == 0, (
        f"aot exit {proc.returncode}\nfailures: {json.dumps(failures, indent=1)}\nstderr:\n{proc.stderr[-4000:]}")
    for target in ("hip:gfx90a", "hip:gfx942"):
        built = {r["kernel"].split("/")[0] for r in rows if r["target"] == target}
        assert built == KERNELS, f"{target}: compiled {built}"
    assert all(r["binary"] == "hsaco" and r["binary_bytes"] > 0 for r in rows)
    assert {r["num_warps"] for r in rows if r["kernel"].startswith("attention")} == {ROCM_LAUNCH.attention_warps}
