"""Engine-level checks every backend must pass; a vendor runs them against its package.

Each check takes `make_llm(model_dir, **engine_args) -> LLM`, so a backend's own tests can
inject its backend (`LLM(path, backend=MyBackend(), ...)`) or select it by device name.
HF transformers (fp32) is the reference throughout.
"""
from __future__ import annotations

import random
from collections.abc import Callable

from octavo.entrypoints.llm import LLM
from octavo.sampling_params import SamplingParams
from octavo.testing.tiny_models import hf_greedy, hf_logprobs

MakeLLM = Callable[..., LLM]
NUM_NEW_TOKENS = 16
GREEDY = SamplingParams(temperature=0.0, max_tokens=NUM_NEW_TOKENS, ignore_eos=True)

# Engine settings that force each scheduling path with the prompts below (block size 16).
SCENARIOS: dict[str, dict] = {
    "default": {},
    "preemption": {"num_kv_blocks": 12},  # the 10 prompts need ~40 blocks at once
    "chunked_prefill": {"max_num_batched_tokens": 24},  # below the longest prompt (70)
    "prefix_cache": {},
}


def varied_prompts(vocab_size: int, seed: int = 0) -> list[list[int]]:
    """10 prompts of 3..70 tokens; the last four share a 40-token prefix."""
    rng = random.Random(seed)
    tokens = lambda n: [rng.randrange(3, vocab_size) for _ in range(n)]  # noqa: E731 - skip specials
    prompts = [tokens(n) for n in (3, 9, 17, 31, 48, 70)]
    prefix = tokens(40)
    prompts += [prefix + tokens(n) for n in (1, 7, 16, 25)]
    return prompts


def assert_no_leaks(llm: LLM) -> None:
    engine = llm.engine
    assert not engine.has_unfinished_requests()
    assert engine.kv.num_free_blocks == engine.kv.num_blocks, "KV blocks leaked"
    assert not engine.kv.req_blocks, "per-request block lists leaked"
    assert not engine.outputs.parents, "output state leaked"


def check_greedy_matches_hf(make_llm: MakeLLM, model_dir: str, scenario: str) -> None:
    llm = make_llm(model_dir, dtype="float32", **SCENARIOS[scenario])
    prompts = varied_prompts(llm.engine.model_config.vocab_size)
    expected = hf_greedy(model_dir, prompts, NUM_NEW_TOKENS)
    got = [o.outputs[0].token_ids for o in llm.generate(prompt_token_ids=prompts, sampling_params=GREEDY)]
    assert got == expected
    stats = llm.engine.stats()
    if scenario == "preemption":
        assert stats.num_preemptions > 0, "the small KV cache did not force a preemption"
    if scenario == "prefix_cache":
        hits_before = stats.prefix_hits
        again = [o.outputs[0].token_ids
                 for o in llm.generate(prompt_token_ids=prompts, sampling_params=GREEDY)]
        assert llm.engine.stats().prefix_hits > hits_before, "the second run did not hit the prefix cache"
        assert again == expected
    assert_no_leaks(llm)


def check_logprobs_match_hf(make_llm: MakeLLM, model_dir: str, atol: float = 1e-4) -> None:
    """Sampled-token and top-k logprobs, and prompt logprobs, against HF's log_softmax."""
    import torch

    llm = make_llm(model_dir, dtype="float32")
    prompt = varied_prompts(llm.engine.model_config.vocab_size)[4]
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True, logprobs=5, prompt_logprobs=3)
    out = llm.generate(prompt_token_ids=[prompt], sampling_params=params)[0]
    completion = out.outputs[0]
    ref = hf_logprobs(model_dir, prompt + completion.token_ids[:-1])
    for i, (token, position) in enumerate(zip(completion.token_ids, completion.logprobs)):
        row = ref[len(prompt) - 1 + i]
        top = torch.topk(row, 5)
        assert abs(position[token].logprob - row[token].item()) < atol
        for tid, value in zip(top.indices.tolist(), top.values.tolist()):
            assert abs(position[tid].logprob - value) < atol
    assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == len(prompt)
    for j in range(1, len(prompt)):
        assert abs(out.prompt_logprobs[j][prompt[j]].logprob - ref[j - 1, prompt[j]].item()) < atol
    total = sum(p[t].logprob for t, p in zip(completion.token_ids, completion.logprobs))
    assert abs(completion.cumulative_logprob - total) < 1e-3
    assert_no_leaks(llm)


def check_half_precision_close_to_hf(make_llm: MakeLLM, model_dir: str, dtype: str = "bfloat16",
                                     max_gap: float = 0.5, mean_gap: float = 0.02,
                                     logprob_atol: float = 0.3) -> None:
    """bf16 (or fp16) cannot match fp32 token for token, so judge each greedy token by HF's fp32
    distribution at that point: it must be (near) HF's argmax, and our logprob near HF's.

    A wrong kernel picks tokens HF ranks lower: the gaps to HF's best token grow well past
    bf16's rounding (typical max gap here ~0.2 nats, mean ~0.003).
    """
    llm = make_llm(model_dir, dtype=dtype)
    prompts = varied_prompts(llm.engine.model_config.vocab_size)
    params = SamplingParams(temperature=0.0, max_tokens=NUM_NEW_TOKENS, ignore_eos=True, logprobs=0)
    gaps = []
    for prompt, out in zip(prompts, llm.generate(prompt_token_ids=prompts, sampling_params=params)):
        completion = out.outputs[0]
        ref = hf_logprobs(model_dir, prompt + completion.token_ids[:-1])
        for i, token in enumerate(completion.token_ids):
            row = ref[len(prompt) - 1 + i]
            gaps.append((row.max() - row[token]).item())
            assert abs(completion.logprobs[i][token].logprob - row[token].item()) < logprob_atol
    assert max(gaps) < max_gap and sum(gaps) / len(gaps) < mean_gap, (max(gaps), sum(gaps) / len(gaps))
    assert_no_leaks(llm)
