"""The whole engine on octavo-neuron, with NxD Inference replaced by the tests' FAKE
(neuron_on_fake_nxdi.py, fake_nxdi/): the real scheduler, KV-cache manager, sampler and
octavo-neuron's worker drive the fake's compile / load / forward, which runs the HF model on
the CPU over a paged cache, choosing and padding buckets as NxDI does. What these tests prove
is octavo-neuron's side of the calls (buckets, block tables, slot mappings, prefix hits,
sampling on the device or the host, the compiled-model cache); not that NxDI itself works.
"""
import pytest
import torch

from neuron_on_fake_nxdi import FakeNxdiNeuronBackend
from neuronx_distributed_inference.models.model_base import NeuronBaseForCausalLM
from octavo import LLM, SamplingParams
from octavo.testing.tiny_models import hf_greedy, make_tiny_model

GREEDY = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    return make_tiny_model("llama", str(tmp_path_factory.mktemp("llama")))


@pytest.fixture
def calls(monkeypatch):
    """Every forward call the fake NxDI receives: (kind, its tensor inputs)."""
    seen = []
    forward = NeuronBaseForCausalLM.forward

    def spy(self, **kwargs):
        kind = "context_encoding" if kwargs["input_ids"].shape[-1] > 1 else "token_generation"
        seen.append((kind, {k: v.clone() for k, v in kwargs.items() if isinstance(v, torch.Tensor)}))
        return forward(self, **kwargs)

    monkeypatch.setattr(NeuronBaseForCausalLM, "forward", spy)
    return seen


def make_llm(path, cache, **kwargs):
    kwargs = {"dtype": "float32", "block_size": 16, "max_num_seqs": 4, "compiled_model_cache": str(cache),
              "context_encoding_buckets": [32, 64], "token_generation_buckets": [32, 64, 128], **kwargs}
    return LLM(path, backend=FakeNxdiNeuronBackend(), **kwargs)


def test_prefills_and_decodes_through_buckets_match_hf(tiny_llama, tmp_path, calls):
    llm = make_llm(tiny_llama, tmp_path)
    prompts = [[5, 17, 300, 42, 7, 99, 12] * 5, [8, 9, 10], [4]]
    outs = llm.generate(prompt_token_ids=prompts, sampling_params=GREEDY)
    assert [o.outputs[0].token_ids for o in outs] == hf_greedy(tiny_llama, prompts, 10)
    kinds = [k for k, _ in calls]
    assert kinds.count("context_encoding") == 2  # the 1-token prompt runs as token generation
    decode_batches = [inputs["input_ids"].shape[0] for k, inputs in calls if k == "token_generation"]
    assert max(decode_batches) == 3  # the step's decodes go together


def test_prefix_cache_hit_runs_context_encoding_on_the_uncached_part(tiny_llama, tmp_path, calls):
    llm = make_llm(tiny_llama, tmp_path)
    shared = list(range(100, 140))  # 40 tokens: 2 full blocks of 16 cached
    prompts = [shared + [1, 2, 3], shared + [7, 8]]
    first = llm.generate(prompt_token_ids=prompts[:1], sampling_params=GREEDY)
    second = llm.generate(prompt_token_ids=prompts[1:], sampling_params=GREEDY)
    assert [first[0].outputs[0].token_ids, second[0].outputs[0].token_ids] == hf_greedy(tiny_llama, prompts, 10)
    cte = [inputs for kind, inputs in calls if kind == "context_encoding"]
    assert [int(c["computed_context_lens"]) for c in cte] == [0, 32]
    assert cte[1]["input_ids"].shape[-1] == 42 and cte[1]["slot_mapping"].shape[-1] == 10


def test_prompt_longer_than_the_largest_bucket_is_rejected_at_admission(tiny_llama, tmp_path, calls):
    llm = make_llm(tiny_llama, tmp_path, token_generation_buckets=[32, 64])
    assert llm.engine.max_model_len == 64
    with pytest.raises(ValueError, match="maximum context length is 64"):
        llm.generate(prompt_token_ids=[list(range(64))], sampling_params=GREEDY)
    assert calls == []  # nothing reached the device
    out = llm.generate(prompt_token_ids=[list(range(63))], sampling_params=SamplingParams(max_tokens=5))
    assert len(out[0].outputs[0].token_ids) == 1  # stops at the largest bucket, never past it


def test_compiled_models_are_cached_on_disk(tiny_llama, tmp_path):
    before = NeuronBaseForCausalLM.compile_count
    make_llm(tiny_llama, tmp_path)
    make_llm(tiny_llama, tmp_path)
    assert NeuronBaseForCausalLM.compile_count == before + 1
    make_llm(tiny_llama, tmp_path, context_encoding_buckets=[64])  # other buckets: another compile
    assert NeuronBaseForCausalLM.compile_count == before + 2
    assert len(list(tmp_path.iterdir())) == 2


def test_device_samples_what_it_can_and_the_host_the_rest(tiny_llama, tmp_path, monkeypatch):
    llm = make_llm(tiny_llama, tmp_path)
    host_rows = []
    sample = type(llm.engine.worker.sampler).sample

    def spy(self, reqs, rows, logits, grammar, out):
        host_rows.extend(r.sampling_params.seed for r in reqs)
        return sample(self, reqs, rows, logits, grammar, out)

    monkeypatch.setattr(type(llm.engine.worker.sampler), "sample", spy)
    prompt = [[5, 6, 7, 8]]
    llm.generate(prompt_token_ids=prompt, sampling_params=GREEDY)
    llm.generate(prompt_token_ids=prompt, sampling_params=SamplingParams(temperature=0.8, top_k=50, max_tokens=4))
    assert host_rows == []
    seeded = SamplingParams(temperature=0.8, seed=7, max_tokens=6, ignore_eos=True)
    a = llm.generate(prompt_token_ids=prompt, sampling_params=seeded)[0].outputs[0].token_ids
    b = llm.generate(prompt_token_ids=prompt, sampling_params=seeded)[0].outputs[0].token_ids
    assert a == b and host_rows == [7] * 12  # seeded: the host sampler, reproducible
    logprobs = llm.generate(prompt_token_ids=prompt, sampling_params=SamplingParams(
        temperature=0.0, max_tokens=3, logprobs=2, ignore_eos=True))[0].outputs[0]
    assert logprobs.token_ids == hf_greedy(tiny_llama, prompt, 3)[0] and len(logprobs.logprobs) == 3


def test_without_on_device_sampling_every_token_is_sampled_on_the_host(tiny_llama, tmp_path, calls):
    llm = make_llm(tiny_llama, tmp_path, on_device_sampling=False)
    prompts = [[5, 17, 300, 42], [8, 9, 10]]
    outs = llm.generate(prompt_token_ids=prompts, sampling_params=GREEDY)
    assert [o.outputs[0].token_ids for o in outs] == hf_greedy(tiny_llama, prompts, 10)
    assert llm.engine.worker.model.neuron_config.on_device_sampling_config is None
