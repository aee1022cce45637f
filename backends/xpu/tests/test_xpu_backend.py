"""XpuBackend: identity, availability, what it shares with octavo-cuda, and its worker.

The worker tests run octavo-xpu's real worker and XPU-graph path with the device substituted
by the CPU in one place (xpu_on_cpu.py: the torch device is the CPU, torch.xpu's memory and
graph calls answered by a stand-in), the Triton kernels under the interpreter (root
conftest.py). No Intel GPU is involved.
"""
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton", reason="these tests run Triton kernels: pip install triton==3.7.1")

import octavo_xpu
from octavo import LLM, SamplingParams
from octavo.backend import Backend, EngineConfig
from octavo.testing.tiny_models import hf_greedy, make_tiny_model
from octavo_cuda import CudaBackend, GpuOptions
from octavo_cuda.attention import TritonAttention
from octavo_cuda.cuda_graphs import CudaGraphs
from octavo_cuda.layer_ops import TritonLayerOps
from octavo_cuda.worker import CudaWorker
from octavo_xpu import XPU_LAUNCH, XpuBackend
from xpu_on_cpu import CPU_AS_XPU, VIRTUAL_DEVICE_BYTES, ReplayGraph, XpuOnCpuBackend


def test_identity_and_shared_options():
    assert issubclass(XpuBackend, Backend) and XpuBackend.name == "xpu"
    assert XpuBackend.options_class is GpuOptions  # --gpu-memory-utilization, --cuda-graph-sizes, --enforce-eager
    assert set(XpuBackend.supported_dtypes) == {torch.bfloat16, torch.float16, torch.float32}


def test_entry_point_registered():
    eps = {ep.name: ep for ep in entry_points(group="octavo.backends")}
    assert "xpu" in eps, f"octavo-xpu not installed (pip install -e backends/xpu); found {sorted(eps)}"
    assert eps["xpu"].load() is XpuBackend


def test_octavo_devices_says_why_here():
    out = subprocess.run([sys.executable, "-m", "octavo.cli", "devices"], capture_output=True, text=True,
                         timeout=120).stdout
    line = next(line for line in out.splitlines() if line.startswith("xpu "))
    if torch.xpu.is_available():
        assert line.split()[1] == "usable", line
    else:
        assert "unusable: no XPU device" in line and torch.__version__ in line, out


def test_availability_with_a_device(monkeypatch):
    monkeypatch.setattr(torch.xpu, "is_available", lambda: True)
    assert XpuBackend.availability().ok
    assert not CudaBackend.availability().ok


def test_reuses_cuda_kernels_without_copies():
    for src in Path(octavo_xpu.__file__).parent.rglob("*.py"):
        assert "triton.jit" not in src.read_text(), f"{src} defines kernels; reuse octavo_cuda's"
    backend = XpuBackend()
    attn, ops = backend.attention_backend(), backend.layer_ops()
    assert type(attn) is TritonAttention and attn.launch is XPU_LAUNCH
    assert type(ops) is TritonLayerOps and ops.launch is XPU_LAUNCH
    assert XPU_LAUNCH.attention_warps == 4  # 128 work-items in sub-groups of 32


def test_runtime_is_torch_xpu_with_xpu_graphs():
    runtime = XpuBackend().runtime()
    assert runtime.api is torch.xpu and runtime.graph_class is torch.xpu.XPUGraph and runtime.has_graphs


def test_device_xpu_fails_at_once_with_the_reason(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "octavo.cli", "generate", "hi", "--device", "xpu",
                           "--model", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "no XPU device" in proc.stderr, proc.stderr[-2000:]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    return make_tiny_model("llama", str(tmp_path_factory.mktemp("llama")))


def test_worker_profiles_and_replays_xpu_graphs_on_the_substituted_device(tiny_llama, monkeypatch):
    """The backend's own worker: KV cache sized by profiling (gpu_memory_utilization of the
    virtual device), decode steps through the captured-graph path, greedy tokens as HF's."""
    replays = []
    monkeypatch.setattr(ReplayGraph, "replay", lambda self: (replays.append(1), self.out.copy_(self.fn())))
    llm = LLM(tiny_llama, backend=XpuOnCpuBackend(), dtype="float32", max_num_seqs=4, max_num_batched_tokens=64,
              cuda_graph_sizes=[1, 2, 4], gpu_memory_utilization=0.5)
    worker = llm.engine.worker
    assert type(worker) is CudaWorker and worker.runtime is CPU_AS_XPU
    # Half the virtual device; the stand-in reports no peak allocation, so the profile step's
    # temporary cache (64 tokens: 4 blocks) comes back on top.
    assert llm.engine.kv.num_blocks == (VIRTUAL_DEVICE_BYTES // 2) // worker.kv_bytes_per_block(16) + 4
    assert isinstance(worker.runner.graphs, CudaGraphs) and worker.runner.graphs.sizes == [1, 2, 4]
    prompts = [[5, 17, 300, 42, 7, 99, 12] * 3, [8, 9, 10], [4]]
    outs = llm.generate(prompt_token_ids=prompts, sampling_params=SamplingParams(temperature=0, max_tokens=6,
                                                                                  ignore_eos=True))
    assert [o.outputs[0].token_ids for o in outs] == hf_greedy(tiny_llama, prompts, 6)
    assert len(replays) >= 5  # every decode step replayed a graph


def test_enforce_eager_captures_nothing(tiny_llama):
    llm = LLM(tiny_llama, backend=XpuOnCpuBackend(), dtype="float32", max_num_seqs=2, num_kv_blocks=64,
              enforce_eager=True)
    assert llm.engine.worker.runner.graphs is None
