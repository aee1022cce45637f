"""Engine-level checks every backend must pass, with HF transformers (fp32) as the reference.

The conformance kit (`octavo.testing.conformance`) runs them against an installed backend;
backend tests may call them directly. Checks that build their own engine take
`make_llm(model_dir, **engine_args) -> LLM`; the others take a shared fp32 `LLM` over the
tiny model at `model_dir` and leave it idle and leak-free.
"""
from __future__ import annotations

import dataclasses
import json
import random
import re
from collections.abc import Callable

import torch

from octavo.config import ConfigError
from octavo.entrypoints.llm import LLM
from octavo.outputs import CompletionOutput
from octavo.sampling_params import SamplingParams
from octavo.structured_output import StructuredOutputParams
from octavo.testing.tiny_models import hf_greedy, hf_logprobs, load_hf_model

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


def _run(llm: LLM, prompts: list[list[int]], params: SamplingParams | list[SamplingParams]) -> list[CompletionOutput]:
    """The first completion of each prompt."""
    return [o.outputs[0] for o in llm.generate(prompt_token_ids=prompts, sampling_params=params)]


# ----------------------------------------------------------------------------- model math


def check_greedy_matches_hf(make_llm: MakeLLM, model_dir: str, scenario: str) -> None:
    llm = make_llm(model_dir, dtype="float32", **SCENARIOS[scenario])
    prompts = varied_prompts(llm.engine.model_config.vocab_size)
    expected = hf_greedy(model_dir, prompts, NUM_NEW_TOKENS)
    got = [c.token_ids for c in _run(llm, prompts, GREEDY)]
    assert got == expected
    stats = llm.engine.stats()
    if scenario == "preemption":
        assert stats.num_preemptions > 0, "the small KV cache did not force a preemption"
    if scenario == "prefix_cache":
        hits_before = stats.prefix_hits
        again = [c.token_ids for c in _run(llm, prompts, GREEDY)]
        assert llm.engine.stats().prefix_hits > hits_before, "the second run did not hit the prefix cache"
        assert again == expected
    assert_no_leaks(llm)


def check_logprobs_match_hf(make_llm: MakeLLM, model_dir: str, atol: float = 1e-4,
                            prompt_logprobs: bool = True) -> None:
    """Sampled-token and top-k logprobs, and prompt logprobs, against HF's log_softmax (a
    backend without prompt logprobs must reject a request for them at admission)."""
    llm = make_llm(model_dir, dtype="float32")
    prompt = varied_prompts(llm.engine.model_config.vocab_size)[4]
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True, logprobs=5, prompt_logprobs=3)
    if not prompt_logprobs:
        try:
            llm.generate(prompt_token_ids=[prompt], sampling_params=params)
        except ValueError as exc:
            assert "prompt_logprobs" in str(exc), exc
        else:
            raise AssertionError("a backend without prompt logprobs accepted a request for them")
        params = dataclasses.replace(params, prompt_logprobs=None)
    out = llm.generate(prompt_token_ids=[prompt], sampling_params=params)[0]
    completion = out.outputs[0]
    ref = hf_logprobs(model_dir, prompt + completion.token_ids[:-1])
    for i, (token, position) in enumerate(zip(completion.token_ids, completion.logprobs)):
        row = ref[len(prompt) - 1 + i]
        top = torch.topk(row, 5)
        assert abs(position[token].logprob - row[token].item()) < atol
        for tid, value in zip(top.indices.tolist(), top.values.tolist()):
            assert abs(position[tid].logprob - value) < atol
    if prompt_logprobs:
        assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == len(prompt)
        for j in range(1, len(prompt)):
            assert abs(out.prompt_logprobs[j][prompt[j]].logprob - ref[j - 1, prompt[j]].item()) < atol
    total = sum(p[t].logprob for t, p in zip(completion.token_ids, completion.logprobs))
    assert abs(completion.cumulative_logprob - total) < 1e-3
    chosen_only = llm.generate(prompt_token_ids=[prompt], sampling_params=SamplingParams(
        temperature=0.0, max_tokens=8, ignore_eos=True, logprobs=0))[0].outputs[0]
    assert all(list(p) == [t] and p[t].rank == 1 for p, t in zip(chosen_only.logprobs, chosen_only.token_ids))
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
    for prompt, completion in zip(prompts, _run(llm, prompts, params)):
        ref = hf_logprobs(model_dir, prompt + completion.token_ids[:-1])
        for i, token in enumerate(completion.token_ids):
            row = ref[len(prompt) - 1 + i]
            gaps.append((row.max() - row[token]).item())
            assert abs(completion.logprobs[i][token].logprob - row[token].item()) < logprob_atol
    assert max(gaps) < max_gap and sum(gaps) / len(gaps) < mean_gap, (max(gaps), sum(gaps) / len(gaps))
    assert_no_leaks(llm)


# ----------------------------------------------------------------------------- sampling parameters


@torch.no_grad()
def hf_greedy_processed(model_dir: str, prompt: list[int], params: SamplingParams,
                        eos_token_id: int | None) -> list[int]:
    """Greedy tokens of HF's fp32 model with vLLM's logit processing applied at every step
    (repetition/presence/frequency penalties, logit_bias, allowed_token_ids, min_tokens),
    stopping as the engine does (stop_token_ids, eos unless ignore_eos, max_tokens)."""
    model = load_hf_model(model_dir)
    out: list[int] = []
    while len(out) < params.max_tokens:
        logits = model(input_ids=torch.tensor([prompt + out]), use_cache=False).logits[0, -1].float()
        vocab = logits.shape[0]
        if params.allowed_token_ids is not None:
            keep = torch.full_like(logits, float("-inf"))
            keep[params.allowed_token_ids] = 0.0
            logits += keep
        for token, bias in (params.logit_bias or {}).items():
            logits[token] += bias
        stops = list(params.stop_token_ids) + ([eos_token_id] if eos_token_id is not None and not params.ignore_eos
                                               else [])
        if len(out) < params.min_tokens:
            logits[stops] = float("-inf")
        counts = torch.bincount(torch.tensor(out, dtype=torch.long), minlength=vocab).float()
        seen = torch.zeros(vocab, dtype=torch.bool)
        seen[prompt + out] = True
        rep = params.repetition_penalty
        logits = torch.where(seen, torch.where(logits > 0, logits / rep, logits * rep), logits)
        logits -= params.frequency_penalty * counts + params.presence_penalty * (counts > 0).float()
        token = int(logits.argmax())
        out.append(token)
        if len(out) >= params.min_tokens and token in stops:
            break
    return out


PROCESSED_GREEDY: dict[str, dict] = {
    "repetition_penalty": {"repetition_penalty": 1.8},
    "presence_penalty": {"presence_penalty": 1.5},
    "frequency_penalty": {"frequency_penalty": 1.2},
    "logit_bias": {"logit_bias": {7: 3.0, 11: -50.0}},
    "allowed_token_ids": {"allowed_token_ids": [5, 9, 13, 17, 21, 25]},
    "min_tokens": {"min_tokens": 6},
    "stop_token_ids": {},  # filled per model: a token greedy decoding reaches
}


def check_processed_greedy(llm: LLM, model_dir: str, name: str) -> None:
    """Greedy decoding under one logit-processing parameter equals HF's logits processed by
    vLLM's rules (`hf_greedy_processed`); stop tokens end the output with finish "stop"."""
    prompt = varied_prompts(llm.engine.model_config.vocab_size, seed=3)[3]
    kwargs = dict(PROCESSED_GREEDY[name])
    if name in ("stop_token_ids", "min_tokens"):
        plain = hf_greedy(model_dir, [prompt], 12)[0]
        kwargs["stop_token_ids"] = [plain[3]]
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=name not in ("min_tokens",), **kwargs)
    expected = hf_greedy_processed(model_dir, prompt, params, llm.engine.eos_token_id)
    (got,) = _run(llm, [prompt], params)
    assert got.token_ids == expected, (name, got.token_ids, expected)
    if name == "stop_token_ids":
        assert got.finish_reason == "stop" and got.stop_reason == kwargs["stop_token_ids"][0]
    assert_no_leaks(llm)


def check_sampling_filters(llm: LLM, model_dir: str, name: str) -> None:
    """Seeded random sampling under top-k / top-p / min-p only draws tokens the filter keeps
    (judged on HF's fp32 distribution, with a small margin at the boundary); the filter at
    its tightest is greedy."""
    prompt = varied_prompts(llm.engine.model_config.vocab_size, seed=4)[4]
    filters = {"top_k": dict(top_k=4), "top_p": dict(top_p=0.6), "min_p": dict(min_p=0.2)}[name]
    tightest = {"top_k": dict(top_k=1), "top_p": dict(top_p=1e-9), "min_p": dict(min_p=1.0)}[name]
    params = SamplingParams(temperature=1.0, max_tokens=12, ignore_eos=True, seed=11, **filters)
    (got,) = _run(llm, [prompt], params)
    ref = hf_logprobs(model_dir, prompt + got.token_ids[:-1])
    for i, token in enumerate(got.token_ids):
        probs = ref[len(prompt) - 1 + i].exp()
        assert _kept(probs, token, name, filters[name]), (name, i, token)
    (tight,) = _run(llm, [prompt], SamplingParams(temperature=1.0, max_tokens=12, ignore_eos=True, seed=5, **tightest))
    assert tight.token_ids == hf_greedy(model_dir, [prompt], 12)[0]
    assert_no_leaks(llm)


def _kept(probs: torch.Tensor, token: int, name: str, value: float, margin: float = 1e-4) -> bool:
    p = probs[token].item()
    if name == "top_k":
        return int((probs > p + margin).sum()) < value
    if name == "top_p":
        return probs[probs > p + margin].sum().item() < value + margin
    return p >= value * probs.max().item() - margin


def check_temperature_zero_is_greedy(llm: LLM, model_dir: str) -> None:
    prompts = varied_prompts(llm.engine.model_config.vocab_size, seed=5)[:4]
    params = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True, seed=3, top_k=50, top_p=0.9)
    assert [c.token_ids for c in _run(llm, prompts, params)] == hf_greedy(model_dir, prompts, 10)
    assert_no_leaks(llm)


def check_max_tokens_eos_and_stop_strings(llm: LLM, model_dir: str) -> None:
    """max_tokens ends with "length"; EOS ends with "stop" unless ignore_eos; a stop string
    ends the text before it (or after it, with include_stop_str_in_output) with "stop"."""
    prompt = varied_prompts(llm.engine.model_config.vocab_size, seed=6)[4]
    greedy = dict(temperature=0.0, max_tokens=16, ignore_eos=True)
    (short,) = _run(llm, [prompt], SamplingParams(**{**greedy, "max_tokens": 3}))
    assert len(short.token_ids) == 3 and short.finish_reason == "length"
    eos = llm.engine.eos_token_id
    forced = dict(temperature=0.0, max_tokens=5, logit_bias={eos: 100.0})
    (stopped,) = _run(llm, [prompt], SamplingParams(**forced))
    assert stopped.token_ids == [eos] and stopped.finish_reason == "stop"
    (kept,) = _run(llm, [prompt], SamplingParams(**forced, ignore_eos=True))
    assert kept.token_ids == [eos] * 5 and kept.finish_reason == "length"
    (late,) = _run(llm, [prompt], SamplingParams(**forced, min_tokens=3))
    assert len(late.token_ids) == 4 and late.token_ids[-1] == eos and eos not in late.token_ids[:3]
    text = _run(llm, [prompt], SamplingParams(**greedy))[0].text
    stop = next((text[i:i + 3] for i in range(4, len(text) - 3) if text[i:i + 3].strip()), None)
    assert stop is not None, f"no usable stop string in {text!r}"
    (cut,) = _run(llm, [prompt], SamplingParams(**greedy, stop=[stop]))
    assert cut.finish_reason == "stop" and cut.stop_reason == stop and cut.text == text[:text.index(stop)]
    (with_stop,) = _run(llm, [prompt], SamplingParams(**greedy, stop=[stop], include_stop_str_in_output=True))
    assert with_stop.text == text[:text.index(stop) + len(stop)]
    assert_no_leaks(llm)


def check_special_tokens_in_text(llm: LLM) -> None:
    """Special tokens leave the text unless skip_special_tokens=False."""
    tokenizer = llm.get_tokenizer()
    special = next(t for t in tokenizer.all_special_ids if t != llm.engine.eos_token_id)
    params = SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True, logit_bias={special: 100.0})
    prompt = varied_prompts(llm.engine.model_config.vocab_size, seed=6)[2]
    (hidden,) = _run(llm, [prompt], params)
    assert hidden.token_ids == [special] * 3 and hidden.text == ""
    (shown,) = _run(llm, [prompt], SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True,
                                                  logit_bias={special: 100.0}, skip_special_tokens=False))
    assert shown.text == tokenizer.decode([special]) * 3
    assert_no_leaks(llm)


def check_seeded_sampling(llm: LLM) -> None:
    """A seed gives the same tokens alone and in a batch with other requests; another seed
    gives others."""
    prompts = varied_prompts(llm.engine.model_config.vocab_size, seed=7)
    seeded = SamplingParams(temperature=1.0, max_tokens=16, ignore_eos=True, seed=1234)
    (alone,) = _run(llm, prompts[3:4], seeded)
    (again,) = _run(llm, prompts[3:4], seeded)
    assert alone.token_ids == again.token_ids
    others = [SamplingParams(temperature=0.9, max_tokens=16, ignore_eos=True) for _ in prompts]
    batch = _run(llm, prompts, others[:3] + [seeded] + others[4:])
    assert batch[3].token_ids == alone.token_ids, "a seeded request changed with its batch"
    (reseeded,) = _run(llm, prompts[3:4], SamplingParams(temperature=1.0, max_tokens=16, ignore_eos=True, seed=4321))
    assert reseeded.token_ids != alone.token_ids
    assert_no_leaks(llm)


def check_parallel_sampling(llm: LLM, model_dir: str) -> None:
    """n > 1 returns n sequences (greedy ones equal HF's); best_of keeps the n with the
    highest cumulative logprob."""
    prompt = varied_prompts(llm.engine.model_config.vocab_size, seed=8)[2]
    greedy = llm.generate(prompt_token_ids=[prompt], sampling_params=SamplingParams(
        n=2, temperature=0.0, max_tokens=8, ignore_eos=True))[0]
    expected = hf_greedy(model_dir, [prompt], 8)[0]
    assert [c.token_ids for c in greedy.outputs] == [expected, expected]
    sampled = dict(temperature=1.0, max_tokens=8, ignore_eos=True, seed=99, logprobs=0)
    every = llm.generate(prompt_token_ids=[prompt], sampling_params=SamplingParams(n=3, **sampled))[0].outputs
    assert len(every) == 3 and [c.index for c in every] == [0, 1, 2]
    best = llm.generate(prompt_token_ids=[prompt], sampling_params=SamplingParams(n=1, best_of=3, **sampled))[0]
    top = max(every, key=lambda c: c.cumulative_logprob)
    assert len(best.outputs) == 1 and best.outputs[0].token_ids == top.token_ids
    assert_no_leaks(llm)


# ----------------------------------------------------------------------------- engine behaviour

GUIDED: dict[str, tuple[StructuredOutputParams, Callable[[str], bool]]] = {
    "regex": (StructuredOutputParams(regex=r"[a-z]{3}-[0-9]{2}"),
              lambda text: re.fullmatch(r"[a-z]{3}-[0-9]{2}", text) is not None),
    "choice": (StructuredOutputParams(choice=["yes", "no", "maybe"]), lambda text: text in ("yes", "no", "maybe")),
    "json": (StructuredOutputParams(json={"enum": ["red", "green", "blue"]}),
             lambda text: json.loads(text) in ("red", "green", "blue")),
}


def check_guided_decoding(llm: LLM, kind: str) -> None:
    """Guided requests (greedy and seeded, beside unguided ones) match their constraint."""
    spec, valid = GUIDED[kind]
    prompts = varied_prompts(llm.engine.model_config.vocab_size, seed=9)[:4]
    params = [SamplingParams(temperature=0.0, max_tokens=24, structured_outputs=spec),
              SamplingParams(temperature=1.0, seed=5, max_tokens=24, structured_outputs=spec),
              SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True),
              SamplingParams(temperature=1.0, seed=6, max_tokens=24, structured_outputs=spec)]
    outs = _run(llm, prompts, params)
    for i in (0, 1, 3):
        assert outs[i].finish_reason == "stop" and valid(outs[i].text), (kind, outs[i].text)
    assert len(outs[2].token_ids) == 8
    assert_no_leaks(llm)


def check_abort(llm: LLM, model_dir: str) -> None:
    """Aborting requests mid-generation frees their blocks; the others finish as HF."""
    engine = llm.engine
    prompts = varied_prompts(engine.model_config.vocab_size, seed=10)[:4]
    for i, prompt in enumerate(prompts):
        engine.add_request(f"abort-{i}", {"prompt_token_ids": prompt}, GREEDY)
    for _ in range(3):
        engine.step()
    for rid in ("abort-1", "abort-3"):
        out = engine.abort_request(rid)
        assert out is not None and out.finished and out.outputs[0].finish_reason == "abort"
    assert engine.abort_request("abort-unknown") is None
    finished = {}
    while engine.has_unfinished_requests():
        finished.update({o.request_id: o for o in engine.step() if o.finished})
    expected = hf_greedy(model_dir, [prompts[0], prompts[2]], NUM_NEW_TOKENS)
    assert [finished["abort-0"].outputs[0].token_ids, finished["abort-2"].outputs[0].token_ids] == expected
    assert set(finished) == {"abort-0", "abort-2"}
    assert_no_leaks(llm)


BAD_CONFIGS: dict[str, tuple[dict, str]] = {
    "dtype": ({"dtype": "float8"}, "dtype"),
    "max_num_seqs": ({"max_num_seqs": 0}, "max_num_seqs"),
    "max_model_len": ({"max_model_len": 10 ** 9}, "max_model_len"),
    "kv_cache_dtype": ({"kv_cache_dtype": "bogus"}, "kv cache dtype"),
    "unknown_option": ({"surely_not_an_option": 1}, "surely_not_an_option"),
}


def check_bad_config_rejected(make_llm: MakeLLM, model_dir: str, name: str) -> None:
    """A setting that cannot work fails at once with a ConfigError naming it."""
    settings, names = BAD_CONFIGS[name]
    try:
        make_llm(model_dir, **settings)
    except ConfigError as exc:
        assert names in str(exc), f"the error does not name {names!r}: {exc}"
    else:
        raise AssertionError(f"{settings} was accepted")
