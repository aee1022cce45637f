"""CudaBackend identity, availability, config handling, KV sizing arithmetic, packaging."""
import subprocess
import sys
from importlib.metadata import entry_points

import pytest
import torch

from octavo.backend import Backend, ConfigError, EngineConfig, TorchWorker
from octavo.engine.options import parse_options
from octavo_cuda import CudaBackend
from octavo_cuda.memory import GiB, MemorySample, kv_cache_bytes, num_blocks_for


def test_identity():
    assert issubclass(CudaBackend, Backend)
    assert CudaBackend.name == "cuda" and CudaBackend.priority == 100
    assert set(CudaBackend.supported_dtypes) == {torch.bfloat16, torch.float16, torch.float32}
    assert CudaBackend.supported_block_sizes == (16, 32)


def test_availability_here():
    av = CudaBackend.availability()
    if torch.cuda.is_available() and torch.version.cuda:
        assert av.ok, av.reason
        return
    assert not av.ok
    assert "no CUDA device" in av.reason and torch.__version__ in av.reason, av.reason
    print("CudaBackend.availability():", av.reason)


def test_availability_reasons(monkeypatch):
    monkeypatch.setattr(torch.version, "hip", "6.4.1", raising=False)
    assert "ROCm build" in CudaBackend.availability().reason
    monkeypatch.setattr(torch.version, "hip", None, raising=False)
    monkeypatch.setattr(torch.version, "cuda", "12.8", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    reason = CudaBackend.availability().reason
    assert "torch.cuda.is_available() is False" in reason and "CUDA 12.8" in reason and "driver" in reason
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert CudaBackend.availability().ok


def test_entry_point_registered():
    eps = {ep.name: ep for ep in entry_points(group="octavo.backends")}
    assert "cuda" in eps, f"octavo-cuda not installed (pip install -e backends/cuda); found {sorted(eps)}"
    assert eps["cuda"].load() is CudaBackend


def test_import_is_cheap():
    code = "import sys, octavo_cuda; assert 'triton' not in sys.modules, 'octavo_cuda imports triton eagerly'"
    subprocess.run([sys.executable, "-c", code], check=True)


def configured(backend: CudaBackend, **engine) -> EngineConfig:
    config = EngineConfig.from_kwargs(**engine)
    if config.device_options:
        backend.options = parse_options(CudaBackend, config.device_options)
    backend.check_and_update_config(config)
    return config


def test_config_defaults_and_options():
    backend = CudaBackend()
    cfg = configured(backend, max_num_seqs=20)
    assert cfg.block_size == 16 and cfg.dtype == torch.bfloat16
    assert backend.options.gpu_memory_utilization == 0.9
    assert backend.options.cuda_graph_sizes == [1, 2, 4, 8, 16]
    cfg = configured(backend, block_size=32, dtype="float16", enforce_eager=True, gpu_memory_utilization="0.5")
    assert cfg.dtype == torch.float16
    assert backend.options.cuda_graph_sizes == [] and backend.options.gpu_memory_utilization == 0.5
    configured(backend, cuda_graph_sizes=[8, 1, 4, 4])
    assert backend.options.cuda_graph_sizes == [1, 4, 8]


@pytest.mark.parametrize("bad,match", [
    (dict(block_size=64), "block sizes"),
    (dict(gpu_memory_utilization=1.5), "--gpu-memory-utilization must be in"),
    (dict(cuda_graph_sizes=[0, 4]), "--cuda-graph-sizes must be positive"),
    (dict(cuda_graph_sizes=["x"]), "--cuda-graph-sizes: expected an integer"),
    (dict(kv_cache_dtype="fp8"), "kv cache dtypes"),
])
def test_config_rejects(bad, match):
    with pytest.raises(ConfigError, match=match):
        configured(CudaBackend(), **bad)


def test_kv_cache_bytes():
    total = 80 * GiB
    start = MemorySample(free=79 * GiB, total=total, reserved=0)
    after = MemorySample(free=60 * GiB, total=total, reserved=18 * GiB)  # 1 GiB grew outside torch
    kv = kv_cache_bytes(start, after, peak_allocated=17 * GiB, utilization=0.9)
    assert kv == int(total * 0.9) - 17 * GiB - 1 * GiB
    assert num_blocks_for(kv, 2 * 1024 * 1024) == kv // (2 * 1024 * 1024)


def test_kv_cache_bytes_errors():
    total = 80 * GiB
    busy = MemorySample(free=40 * GiB, total=total, reserved=0)
    with pytest.raises(MemoryError, match="only 40.00 GiB was free"):
        kv_cache_bytes(busy, busy, 0, 0.9)
    start = MemorySample(free=80 * GiB, total=total, reserved=0)
    with pytest.raises(MemoryError, match="no memory left"):
        kv_cache_bytes(start, start, 75 * GiB, 0.9)
    with pytest.raises(ValueError):
        kv_cache_bytes(start, start, 0, 0.0)


def test_worker_builds_on_torch_worker():
    from octavo_cuda.worker import CudaWorker

    assert issubclass(CudaWorker, TorchWorker)
    assert "num_kv_blocks" not in getattr(CudaWorker, "__abstractmethods__", set())
