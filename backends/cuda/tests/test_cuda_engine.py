"""The whole engine on this package's kernels, against HF transformers, on the CPU.

The shared conformance check (octavo.testing.conformance) drives the real engine (scheduler,
model runner, sampler) with this package's attention backend and layer ops (fused RMSNorm
with the residual add, rotary); the kernels run interpreted (TRITON_INTERPRET=1, see the
root conftest.py), so only the device differs from production. A 2-layer tiny Gemma 3 (one
sliding-window layer of 16, one full layer, GQA 4/2, query_pre_attn_scalar scale, (1 + w)
norms, q/k norms) and the 2-layer tiny Llama keep it to seconds.
"""
import os
from collections import Counter

import pytest
import torch

pytest.importorskip("triton", reason="these tests run Triton kernels: pip install triton==3.7.1")

from octavo import LLM, SamplingParams
from octavo.backend import Availability
from octavo.config import EngineConfig
from octavo.testing import conformance
from octavo.testing.tiny_models import make_tiny_model
from octavo.worker import TorchWorker
from octavo_cuda import CudaBackend
from octavo_cuda.launch import Launch
from octavo_cuda.worker import profile_batch, run_profile_step

DEVICE = torch.device(os.environ.get("OCTAVO_TRITON_DEVICE", "cpu"))


class FixedBlocksWorker(TorchWorker):
    def num_kv_blocks(self, block_size: int) -> int:
        return self.config.num_kv_blocks or 64


class InterpretedCudaBackend(CudaBackend):
    """CudaBackend with its attention, on whatever device the kernels run here."""

    @classmethod
    def availability(cls) -> Availability:
        return Availability(True)

    def create_worker(self, config):
        return FixedBlocksWorker(config, self, DEVICE, self.attention_backend())


@pytest.fixture(scope="module")
def tiny_gemma3(tmp_path_factory):
    return make_tiny_model("gemma3", str(tmp_path_factory.mktemp("gemma3-2l")), num_hidden_layers=2,
                           layer_types=["sliding_attention", "full_attention"])


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    return make_tiny_model("llama", str(tmp_path_factory.mktemp("llama")))


def make_llm(path, **kwargs):
    return LLM(path, backend=InterpretedCudaBackend(), **kwargs)


@pytest.mark.parametrize("family", ["gemma3", "llama"])
def test_greedy_matches_hf(family, request):
    conformance.check_greedy_matches_hf(make_llm, request.getfixturevalue(f"tiny_{family}"), "default")


def test_model_runs_on_fused_kernels(tiny_llama, monkeypatch):
    """Each step: per layer 2 RMSNorms (the residual add inside), 1 rotary of q and k, the KV
    write and attention; then the final norm. No norm or rope is left to torch."""
    launches = Counter()
    run = Launch.run

    def counted(self):
        launches[self.kernel.__name__] += 1
        run(self)

    monkeypatch.setattr(Launch, "run", counted)
    llm = make_llm(tiny_llama, dtype="float32")
    params = SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True)
    llm.generate(prompt_token_ids=[[5, 6, 7]], sampling_params=params)  # a prefill step, a decode step
    layers = llm.engine.model_config.num_layers
    assert launches == {"rms_norm_kernel": 2 * (2 * layers + 1), "rotary_kernel": 2 * layers,
                        "reshape_and_cache_kernel": 2 * layers, "unified_attention_kernel": 2 * layers}


def test_profile_batch_shape():
    cfg = EngineConfig(max_num_batched_tokens=100, max_num_seqs=8)
    batch = profile_batch(cfg, max_model_len=64, block_size=16)
    lens = [r.num_new_tokens for r in batch.requests]
    assert sum(lens) == 100 == batch.num_batched_tokens and len(lens) <= 8 and max(lens) < 64
    blocks = [b for r in batch.requests for b in r.block_ids]
    assert blocks == list(range(len(blocks)))
    assert all(len(r.block_ids) * 16 >= r.num_new_tokens for r in batch.requests)
    big = profile_batch(EngineConfig(max_num_batched_tokens=8192, max_num_seqs=4), max_model_len=1024, block_size=32)
    assert all(r.num_new_tokens <= 1023 for r in big.requests) and len(big.requests) <= 4


def test_profile_step_runs_through_the_worker(tiny_gemma3):
    backend = InterpretedCudaBackend()
    cfg = EngineConfig(model=tiny_gemma3, dtype="float32", max_num_batched_tokens=40, max_num_seqs=3)
    backend.check_and_update_config(cfg)
    worker = backend.create_worker(cfg)
    worker.load_model()
    temp_bytes = run_profile_step(worker, cfg.block_size)
    assert temp_bytes == 3 * worker.kv_bytes_per_block(cfg.block_size)  # 3 requests of 14/13/13 tokens
