"""Every sampling parameter changes what comes out, exactly as a reference says it should.

Logit processors are checked against a step-by-step reference over HF's logits; random
sampling against properties that an ignored parameter would break.
"""
import dataclasses

import pytest
import torch

from octavo import SamplingParams
from octavo.testing.conformance import assert_no_leaks, varied_prompts
from octavo.testing.tiny_models import load_hf_model

PROMPT = varied_prompts(1000)[3]  # 31 tokens
EOS = 2


def generate(llm, params, prompts=(PROMPT,)):
    return llm.generate(prompt_token_ids=list(prompts), sampling_params=params)


def tokens(llm, params, prompt=PROMPT):
    return generate(llm, params, [prompt])[0].outputs[0].token_ids


@torch.no_grad()
def reference_greedy(path, prompt, n, process):
    """HF logits, `process(logits, output_so_far)` applied, argmax, n times (no KV cache)."""
    model = load_hf_model(path)
    out = []
    for _ in range(n):
        logits = model(torch.tensor([prompt + out])).logits[0, -1].float()
        out.append(int(process(logits.clone(), out).argmax()))
    return out


GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)


def greedy(**kw):
    return dataclasses.replace(GREEDY, **kw)


@pytest.fixture(scope="module")
def path(tiny_model):
    return tiny_model("llama")


@pytest.fixture(scope="module")
def plain(llama_llm):
    return tokens(llama_llm, GREEDY)


def test_repetition_penalty(llama_llm, path, plain):
    def process(logits, out):
        seen = torch.tensor(sorted(set(PROMPT + out)))
        logits[seen] = torch.where(logits[seen] > 0, logits[seen] / 1.8, logits[seen] * 1.8)
        return logits

    got = tokens(llama_llm, greedy(repetition_penalty=1.8))
    assert got == reference_greedy(path, PROMPT, 12, process)
    assert got != plain


@pytest.mark.parametrize("frequency,presence", [(-1.0, 0.0), (0.0, -1.0), (1.5, 0.7)])
def test_frequency_and_presence_penalties(llama_llm, path, frequency, presence):
    def process(logits, out):
        counts = torch.bincount(torch.tensor(out, dtype=torch.long), minlength=logits.numel()).float()
        return logits - frequency * counts - presence * (counts > 0).float()

    params = greedy(max_tokens=24, frequency_penalty=frequency, presence_penalty=presence)
    got = tokens(llama_llm, params)
    assert got == reference_greedy(path, PROMPT, 24, process)
    assert got != tokens(llama_llm, greedy(max_tokens=24))


def test_logit_bias(llama_llm, path, plain):
    target = plain[0] + 1
    bias = {target: 3.0, plain[1]: -50.0}

    def process(logits, out):
        logits[target] += 3.0
        logits[plain[1]] -= 50.0
        return logits

    got = tokens(llama_llm, greedy(logit_bias=bias))
    assert got == reference_greedy(path, PROMPT, 12, process)
    assert plain[1] not in got
    assert tokens(llama_llm, greedy(logit_bias={target: 100.0})) == [target] * 12


def test_allowed_token_ids(llama_llm, path):
    allowed = [5, 77, 300, 901]

    def process(logits, out):
        masked = torch.full_like(logits, float("-inf"))
        masked[allowed] = logits[allowed]
        return masked

    assert tokens(llama_llm, greedy(allowed_token_ids=allowed)) == reference_greedy(path, PROMPT, 12, process)
    sampled = tokens(llama_llm, SamplingParams(temperature=1.5, max_tokens=30, allowed_token_ids=allowed, seed=1))
    assert set(sampled) <= set(allowed)


def test_min_tokens_blocks_eos_and_stop_ids(llama_llm, plain):
    stop_id = plain[2]
    early = generate(llama_llm, greedy(stop_token_ids=[stop_id], ignore_eos=False))[0].outputs[0]
    assert early.token_ids == plain[:3] and early.finish_reason == "stop" and early.stop_reason == stop_id
    late = generate(llama_llm, greedy(stop_token_ids=[stop_id], ignore_eos=False, min_tokens=6))[0].outputs[0]
    assert len(late.token_ids) >= 6 and stop_id not in late.token_ids[:6]
    forced_eos = greedy(ignore_eos=False, logit_bias={EOS: 100.0}, min_tokens=4)
    out = generate(llama_llm, forced_eos)[0].outputs[0]
    assert len(out.token_ids) == 5 and out.token_ids[-1] == EOS and EOS not in out.token_ids[:4]


def test_ignore_eos_and_max_tokens(llama_llm):
    forced = greedy(logit_bias={EOS: 100.0}, ignore_eos=False)
    stopped = generate(llama_llm, forced)[0].outputs[0]
    assert stopped.token_ids == [EOS] and stopped.finish_reason == "stop"
    kept = generate(llama_llm, dataclasses.replace(forced, ignore_eos=True))[0].outputs[0]
    assert kept.token_ids == [EOS] * 12 and kept.finish_reason == "length"
    assert len(tokens(llama_llm, greedy(max_tokens=5))) == 5


def test_stop_strings(llama_llm):
    text = generate(llama_llm, greedy(max_tokens=24))[0].outputs[0].text
    stop = text[len(text) // 2:len(text) // 2 + 3]
    assert stop.strip() and stop in text
    cut = generate(llama_llm, greedy(max_tokens=24, stop=[stop]))[0].outputs[0]
    assert cut.text == text[:text.index(stop)] and cut.finish_reason == "stop" and cut.stop_reason == stop
    kept = generate(llama_llm, greedy(max_tokens=24, stop=[stop], include_stop_str_in_output=True))[0].outputs[0]
    assert kept.text == text[:text.index(stop) + len(stop)]


def test_skip_special_tokens(llama_llm):
    params = greedy(max_tokens=3, logit_bias={1: 100.0})  # <|im_start|>
    assert generate(llama_llm, params)[0].outputs[0].text == ""
    shown = generate(llama_llm, dataclasses.replace(params, skip_special_tokens=False))[0].outputs[0].text
    assert shown == "<|im_start|>" * 3


def test_temperature_top_k_top_p_min_p(llama_llm, plain):
    hot = SamplingParams(temperature=2.0, max_tokens=12, ignore_eos=True, seed=3)
    assert tokens(llama_llm, hot) != plain
    # Each of these leaves only the most likely token; ignoring it would sample freely.
    for narrow in (dict(top_k=1), dict(top_p=1e-6), dict(min_p=1.0)):
        assert tokens(llama_llm, dataclasses.replace(hot, **narrow)) == plain, narrow
    # A wider top-k keeps sampling inside the top-k of the reference distribution.
    assert tokens(llama_llm, dataclasses.replace(hot, top_k=2)) != plain


def test_top_p_restricts_to_nucleus(llama_llm, path):
    logits = load_hf_model(path)(torch.tensor([PROMPT])).logits[0, -1].float()
    probs, order = logits.softmax(-1).sort(descending=True)
    nucleus = set(order[:int((probs.cumsum(-1) < 0.5).sum()) + 1].tolist())
    firsts = {tokens(llama_llm, SamplingParams(temperature=1.0, top_p=0.5, max_tokens=1, seed=s))[0]
              for s in range(40)}
    assert firsts <= nucleus
    free = {tokens(llama_llm, SamplingParams(temperature=1.0, max_tokens=1, seed=s))[0] for s in range(40)}
    assert not free <= nucleus


def test_seed_is_reproducible_alone_and_in_any_batch(llama_llm):
    seeded = SamplingParams(temperature=1.0, max_tokens=16, ignore_eos=True, seed=1234)
    alone = tokens(llama_llm, seeded)
    assert tokens(llama_llm, seeded) == alone
    assert tokens(llama_llm, dataclasses.replace(seeded, seed=4321)) != alone
    prompts = varied_prompts(1000, seed=5)
    mixed = [SamplingParams(temperature=1.0, max_tokens=16), GREEDY, seeded,
             SamplingParams(temperature=0.7, top_k=5, max_tokens=9)]
    batch_prompts = [prompts[0], prompts[1], PROMPT, prompts[2]]
    outs = llama_llm.generate(prompt_token_ids=batch_prompts, sampling_params=mixed)
    assert outs[2].outputs[0].token_ids == alone


def test_n_and_best_of(llama_llm):
    params = SamplingParams(temperature=1.0, max_tokens=10, ignore_eos=True, seed=7, n=4, logprobs=0)
    four = generate(llama_llm, params)[0].outputs
    assert [c.index for c in four] == [0, 1, 2, 3]
    assert len({tuple(c.token_ids) for c in four}) > 1
    best = generate(llama_llm, dataclasses.replace(params, n=2, best_of=4, logprobs=None))[0].outputs
    ranked = sorted(four, key=lambda c: c.cumulative_logprob, reverse=True)
    assert [c.token_ids for c in best] == [c.token_ids for c in ranked[:2]]
    assert best[0].logprobs is None
    assert_no_leaks(llama_llm)


def test_n_shares_prompt_blocks(llama_llm):
    engine = llama_llm.engine
    engine.kv.reset_prefix_cache()
    prompt = varied_prompts(1000, seed=9)[5] + varied_prompts(1000, seed=10)[5]  # 140 tokens, 8 full blocks
    engine.add_request("share", {"prompt_token_ids": prompt},
                       SamplingParams(n=4, temperature=1.0, max_tokens=4, ignore_eos=True))
    engine.step()
    used = engine.kv.num_blocks - engine.kv.num_free_blocks
    assert used == 8 + 4 * 1, "each child should add only its partial last block"
    while engine.has_unfinished_requests():
        engine.step()
    assert_no_leaks(llama_llm)


def test_logprobs_zero_gives_the_chosen_token_only(llama_llm, plain):
    out = generate(llama_llm, greedy(logprobs=0))[0].outputs[0]
    assert all(list(p) == [t] for p, t in zip(out.logprobs, out.token_ids))
    assert all(p[t].rank == 1 for p, t in zip(out.logprobs, plain))


def test_abort_frees_blocks(llama_llm):
    engine = llama_llm.engine
    for i in range(3):
        engine.add_request(f"abort-{i}", {"prompt_token_ids": PROMPT},
                           SamplingParams(max_tokens=50, ignore_eos=True, n=2 if i == 1 else 1))
    engine.step()
    engine.step()
    final = [engine.abort_request(f"abort-{i}") for i in range(3)]
    assert all(o.finished and o.outputs[0].finish_reason == "abort" for o in final)
    assert engine.abort_request("unknown") is None
    assert_no_leaks(llama_llm)


def test_engine_seed_makes_unseeded_sampling_reproducible(tiny_model):
    from octavo import LLM

    hot = SamplingParams(temperature=1.5, max_tokens=16, ignore_eos=True)
    runs = [tokens(LLM(tiny_model("llama"), dtype="float32", num_kv_blocks=64, seed=s), hot) for s in (7, 7, 8)]
    assert runs[0] == runs[1] and runs[0] != runs[2]
