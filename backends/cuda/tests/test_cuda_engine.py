"""The engine on this package's kernels, on the CPU (`cuda_emulation`: the kernels run
interpreted, so only the device differs from production).

The engine-level checks against HF transformers run through the conformance kit (CI:
`--octavo-backend backends/cuda/tests/cuda_emulation.py:InterpretedCudaBackend`); here, what
only this backend has: every norm and rotary of the model goes through the fused kernels, and
the profile step that sizes the KV cache. A 2-layer tiny Gemma 3 (one sliding-window layer of
16, one full layer, GQA 4/2, query_pre_attn_scalar scale, (1 + w) norms, q/k norms) and the
2-layer tiny Llama keep it to seconds.
"""
from collections import Counter

import pytest

pytest.importorskip("triton", reason="these tests run Triton kernels: pip install triton==3.7.1")

from cuda_emulation import InterpretedCudaBackend

from octavo import LLM, SamplingParams
from octavo.backend import EngineConfig
from octavo.testing.tiny_models import make_tiny_model
from octavo_cuda.launch import Launch
from octavo_cuda.worker import profile_batch, run_profile_step


@pytest.fixture(scope="module")
def tiny_gemma3(tmp_path_factory):
    return make_tiny_model("gemma3", str(tmp_path_factory.mktemp("gemma3-2l")), num_hidden_layers=2,
                           layer_types=["sliding_attention", "full_attention"])


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    return make_tiny_model("llama", str(tmp_path_factory.mktemp("llama")))


def make_llm(path, **kwargs):
    return LLM(path, backend=InterpretedCudaBackend(), **kwargs)


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
    assert [n.request_id for n in batch.new_requests] == [r.request_id for r in batch.requests]
    blocks = [b for r in batch.requests for b in r.new_block_ids]
    assert blocks == list(range(len(blocks)))
    assert all(len(r.new_block_ids) * 16 >= r.num_new_tokens for r in batch.requests)
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
