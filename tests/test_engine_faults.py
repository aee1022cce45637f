"""The engine survives what one request causes: a worker that raises for one request (injected
through the backend contract), a value that breaks the sampling tensors, a best_of request
aborted before it has a token, a request that would outgrow the KV cache. The request at fault
ends with finish reason "error"; its neighbours get exactly the tokens they get alone; no KV
block leaks. A broken engine (every request fails alone) raises EngineDeadError."""
from __future__ import annotations

import logging

import pytest
from faulty_backend import FaultyBackend

from octavo import LLM, SamplingParams
from octavo.config import ConfigError
from octavo.engine.isolation import EngineDeadError

PROMPTS = ["The quick brown fox", "Once upon a time", "In a galaxy far away", "Hello world, this is"]
GREEDY = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
SEEDED = SamplingParams(temperature=0.9, top_k=20, seed=7, max_tokens=8, ignore_eos=True)


@pytest.fixture(scope="module")
def faulty_llm(tiny_model):
    return LLM(tiny_model("llama"), backend=FaultyBackend(poison="poison"), dtype="float32", num_kv_blocks=256)


def run(llm: LLM, requests: list[tuple[str, object, SamplingParams]], max_steps: int = 2000) -> dict:
    """Add the requests together, step until all finish (bounded); finished outputs by id."""
    engine = llm.engine
    for rid, prompt, params in requests:
        engine.add_request(rid, prompt, params)
    done = {}
    for _ in range(max_steps):
        if not engine.has_unfinished_requests():
            break
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out
    assert not engine.has_unfinished_requests(), "requests still running after the step bound"
    return done


def assert_no_leak(llm: LLM) -> None:
    engine = llm.engine
    assert engine.kv.num_free_blocks == engine.kv.num_blocks
    assert not engine.scheduler.running and not engine.scheduler.waiting and not engine.scheduler.requests
    assert not engine.outputs.parents and not engine.outputs.seqs


def reference(llama_llm, prompt, params) -> list[int]:
    return llama_llm.generate([prompt], params)[0].outputs[0].token_ids


def test_a_request_the_worker_fails_on_fails_alone(faulty_llm, llama_llm, caplog):
    caplog.set_level(logging.ERROR, logger="octavo")
    requests = [(f"ok-{i}", p, GREEDY if i % 2 else SEEDED) for i, p in enumerate(PROMPTS)]
    requests.insert(2, ("poison-1", "A poisoned prompt", GREEDY))
    requests.append(("poison-2", "Another poisoned one", SamplingParams(n=2, temperature=0.5, max_tokens=8)))
    done = run(faulty_llm, requests)
    for rid in ("poison-1", "poison-2"):
        out = done[rid]
        assert out.error and all(c.finish_reason == "error" for c in out.outputs), out
        assert any(rid in m for m in caplog.messages)  # the cause is logged under the request id
    for rid, prompt, params in requests:
        if rid.startswith("ok"):
            assert done[rid].error is None
            assert done[rid].outputs[0].token_ids == reference(llama_llm, prompt, params), rid
    assert_no_leak(faulty_llm)


def test_a_request_failing_mid_generation_keeps_its_neighbours(tiny_model, llama_llm):
    llm = LLM(tiny_model("llama"), backend=FaultyBackend(poison="poison", after_steps=3), dtype="float32",
              num_kv_blocks=256)
    done = run(llm, [("ok-0", PROMPTS[0], GREEDY), ("poison", PROMPTS[1], GREEDY), ("ok-1", PROMPTS[2], SEEDED)])
    assert done["poison"].outputs[0].finish_reason == "error"
    assert 0 < len(done["poison"].outputs[0].token_ids) < 8  # it had generated some tokens first
    assert done["ok-0"].outputs[0].token_ids == reference(llama_llm, PROMPTS[0], GREEDY)
    assert done["ok-1"].outputs[0].token_ids == reference(llama_llm, PROMPTS[2], SEEDED)
    assert_no_leak(llm)


def test_a_prefix_hit_on_blocks_a_failed_request_was_writing_is_recomputed(faulty_llm, llama_llm):
    """The innocent request is scheduled in the same step as the poisoned one with the same
    prompt, so it hits the poisoned one's blocks (registered, never written): its result that
    step is void; it must be recomputed, and nothing may hit those blocks later."""
    prompt = {"prompt_token_ids": list(range(10, 60))}  # three full blocks of 16
    engine = faulty_llm.engine
    preemptions = engine.scheduler.num_preemptions
    done = run(faulty_llm, [("poison-3", prompt, GREEDY), ("ok-same-prefix", prompt, GREEDY)])
    assert done["poison-3"].outputs[0].finish_reason == "error"
    assert engine.scheduler.num_preemptions > preemptions  # the innocent one went back to the queue
    want = reference(llama_llm, prompt, GREEDY)
    assert done["ok-same-prefix"].outputs[0].token_ids == want
    assert run(faulty_llm, [("ok-later", prompt, GREEDY)])["ok-later"].outputs[0].token_ids == want
    assert_no_leak(faulty_llm)


def test_a_value_that_breaks_the_sampling_tensors_fails_only_its_request(llama_llm):
    """make_request refuses such values; one that gets past it (set after validation) fails
    while the step's sampling tensors are built, and only its request fails."""
    engine = llama_llm.engine
    bad = engine.make_request("bad-top-k", PROMPTS[0], SamplingParams(temperature=1.0, top_k=5, max_tokens=4))
    bad.params.top_k = 2**63  # overflows int64 in the sampling tensors
    engine.add(bad)
    done = run(llama_llm, [(f"ok-{i}", p, GREEDY) for i, p in enumerate(PROMPTS[:2])])
    assert done["bad-top-k"].outputs[0].finish_reason == "error"
    for i, p in enumerate(PROMPTS[:2]):
        assert done[f"ok-{i}"].outputs[0].token_ids == reference(llama_llm, p, GREEDY)
    assert_no_leak(llama_llm)


@pytest.mark.parametrize("field,value", [("top_k", 2**63), ("top_k", 10**6), ("stop_token_ids", [2**63]),
                                         ("allowed_token_ids", [-1]), ("logit_bias", {2**70: 1.0}),
                                         ("logprobs", 10**9)])
def test_values_that_could_break_a_step_are_refused_at_admission(llama_llm, field, value):
    from octavo.engine.llm_engine import InputError

    params = SamplingParams(temperature=1.0, max_tokens=4)
    setattr(params, field, value)
    with pytest.raises(InputError) as e:
        llama_llm.engine.make_request("r", PROMPTS[0], params)
    assert e.value.param == field


@pytest.mark.parametrize("kwargs,param", [(dict(temperature=float("inf")), "temperature"),
                                          (dict(temperature=float("nan")), "temperature"),
                                          (dict(repetition_penalty=float("inf")), "repetition_penalty"),
                                          (dict(presence_penalty=float("-inf")), "presence_penalty"),
                                          (dict(seed=2**63), "seed"), (dict(seed=2**63 - 1, n=2), "seed"),
                                          (dict(logit_bias={5: float("inf")}), "logit_bias")])
def test_sampling_params_refuse_non_finite_and_out_of_range_values(kwargs, param):
    from octavo.sampling_params import SamplingParamError

    with pytest.raises(SamplingParamError) as e:
        SamplingParams(**kwargs)
    assert e.value.param == param


def test_aborting_best_of_before_any_token(llama_llm):
    """Defect: the abort path ranked best_of candidates by a score that was still None."""
    engine = llama_llm.engine
    engine.add_request("best", PROMPTS[0], SamplingParams(n=1, best_of=2, max_tokens=8))
    out = engine.abort_request("best")
    assert out.finished and out.outputs[0].finish_reason == "abort"
    engine.add_request("best-2", PROMPTS[0], SamplingParams(n=2, best_of=3, max_tokens=8, temperature=1.0, seed=1))
    engine.step()  # one step: the prompt ran and sampled; an abort now ranks real scores
    out = engine.abort_request("best-2")
    assert len(out.outputs) == 2
    run(llama_llm, [])
    assert_no_leak(llama_llm)


def test_a_broken_engine_raises_engine_dead(tiny_model):
    llm = LLM(tiny_model("llama"), backend=FaultyBackend(), dtype="float32", num_kv_blocks=64)
    for i, p in enumerate(PROMPTS):
        llm.engine.add_request(f"r{i}", p, GREEDY)
    with pytest.raises(EngineDeadError):
        for _ in range(10):
            llm.engine.step()


def test_max_model_len_is_fitted_to_the_kv_cache(tiny_model, caplog):
    """Defect: a request alone in the engine could outgrow a cache smaller than max_model_len,
    preempt itself and block the queue forever."""
    caplog.set_level(logging.WARNING, logger="octavo")
    llm = LLM(tiny_model("llama"), dtype="float32", num_kv_blocks=4, block_size=16)
    assert llm.engine.max_model_len == llm.engine.model_config.max_model_len == 64
    assert any("lowering max_model_len to 64" in m for m in caplog.messages)
    done = run(llm, [("long", PROMPTS[0], SamplingParams(max_tokens=None, ignore_eos=True)),
                     ("next", PROMPTS[1], SamplingParams(max_tokens=4, ignore_eos=True))], max_steps=500)
    assert done["long"].outputs[0].finish_reason == "length"
    assert len(done["long"].prompt_token_ids) + len(done["long"].outputs[0].token_ids) == 64
    assert len(done["next"].outputs[0].token_ids) == 4
    assert_no_leak(llm)


def test_an_explicit_max_model_len_the_cache_cannot_hold_is_refused(tiny_model):
    with pytest.raises(ConfigError, match=r"max_model_len is 512 tokens but the KV cache holds 64 \(4 blocks of 16"):
        LLM(tiny_model("llama"), dtype="float32", num_kv_blocks=4, block_size=16, max_model_len=512)


def test_a_step_budget_below_max_model_len_without_chunked_prefill_is_refused(tiny_model):
    with pytest.raises(ConfigError, match=r"max_num_batched_tokens \(64\) is smaller than max_model_len \(128\)"):
        LLM(tiny_model("llama"), dtype="float32", num_kv_blocks=64, max_model_len=128,
            enable_chunked_prefill=False, max_num_batched_tokens=64)
