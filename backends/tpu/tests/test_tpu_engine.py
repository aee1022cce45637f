"""The engine on the TPU backend, run by XLA's CPU client (PJRT_DEVICE=CPU), which compiles
and runs the graphs a TPU would (all but the Pallas kernel). Correctness against HF is the
conformance kit's (scripts/test_tpu.sh runs it with --octavo-device tpu); here:

- the compile budget: warm-up compiles exactly the plan's graphs, and a workload of 40
  requests (random lengths, prefill chunks mixed with decodes, aborts, preemptions,
  sampling features) compiles nothing more;
- a second engine in the process compiles nothing.

Small engine limits keep the buckets few; graphs of the same shapes compile once per process.
"""
import random

import pytest

from octavo import LLM, SamplingParams, StructuredOutputParams
from octavo.testing import checks
from octavo.testing.tiny_models import make_tiny_model
from octavo_tpu import TpuBackend
from octavo_tpu.graphs import num_compiles

LIMITS = {"max_num_seqs": 16, "max_num_batched_tokens": 64}


def make_llm(path, **kwargs):
    return LLM(path, backend=TpuBackend(), **{**LIMITS, **kwargs})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    built = {}

    def get(family):
        if family not in built:
            built[family] = make_tiny_model(family, str(tmp_path_factory.mktemp(family)))
        return built[family]

    return get


def budget_workload(vocab: int, seed: int = 0) -> list[tuple[list[int], SamplingParams]]:
    """40 requests: prompts of 1..150 tokens (longer than a step: chunked prefill), outputs of
    1..40 tokens, and a spread of sampling features."""
    rng = random.Random(seed)
    features = [dict(temperature=0.0), dict(temperature=0.8, seed=1), dict(temperature=1.0, top_k=20, top_p=0.9),
                dict(temperature=0.7, min_p=0.05), dict(temperature=0.0, logprobs=4),
                dict(temperature=0.0, prompt_logprobs=2), dict(temperature=0.9, repetition_penalty=1.2),
                dict(temperature=0.0, structured_outputs=StructuredOutputParams(choice=["yes", "no", "maybe"]))]
    requests = []
    for i in range(40):
        prompt = [rng.randrange(3, vocab) for _ in range(rng.randint(1, 150))]
        params = SamplingParams(max_tokens=rng.randint(1, 40), ignore_eos=True, **features[i % len(features)])
        requests.append((prompt, params))
    return requests


def test_compile_budget(tiny, monkeypatch):
    """Warm-up compiles the plan's graphs, exactly; then nothing compiles: random lengths,
    prefill chunks mixed with decodes, requests arriving while others run, aborts and
    preemptions (a KV cache of 24 blocks for up to 12 requests of up to 190 tokens).

    Other engines of this process may have compiled some of the graphs (of the same shapes),
    so warm-up is held to running each of the plan's graphs once; that it compiles exactly
    those in a fresh process is test_tpu_compile_cache's first start."""
    llm = make_llm(tiny("llama"), dtype="float32", num_kv_blocks=24, max_num_seqs=12, max_num_batched_tokens=48)
    engine = llm.engine
    worker = engine.worker
    plan = worker.runner.graphs.plan
    assert plan.token_buckets == [16, 32, 48] and plan.req_buckets == [8, 12]
    assert worker.num_warm_up_graphs == plan.num_graphs == 15  # 3 token buckets x 3 + 2 request buckets x 3
    mixed_steps = []  # per step: prefill chunks and decodes together
    execute = worker.execute_model

    def spy(batch):
        lens = [r.num_new_tokens for r in batch.requests]
        mixed_steps.append(max(lens, default=0) > 1 and min(lens, default=0) == 1)
        execute(batch)

    monkeypatch.setattr(worker, "execute_model", spy)
    before = num_compiles()
    pending = budget_workload(engine.model_config.vocab_size)
    rng = random.Random(1)
    running, aborted, step = set(), 0, 0
    while pending or engine.has_unfinished_requests():
        for _ in range(rng.randint(0, 3)):  # arrivals while others run
            if pending:
                prompt, params = pending.pop()
                engine.add_request(f"req-{len(pending)}", prompt, params)
                running.add(f"req-{len(pending)}")
        if step % 7 == 3 and running:  # an abort every few steps
            victim = rng.choice(sorted(running))
            engine.abort_request(victim)
            running.discard(victim)
            aborted += 1
        for out in engine.step():
            if out.finished:
                running.discard(out.request_id)
        step += 1
    assert num_compiles() == before, "serving compiled a graph"
    assert engine.stats().num_preemptions > 0 and aborted > 0 and any(mixed_steps)
    checks.assert_no_leaks(llm)


def test_a_second_engine_in_the_process_compiles_nothing(tiny):
    path = tiny("mistral")
    make_llm(path, dtype="float32")
    before = num_compiles()
    llm = make_llm(path, dtype="float32")
    assert num_compiles() == before
    prompts = checks.varied_prompts(1000)[:3]
    llm.generate(prompt_token_ids=prompts, sampling_params=checks.GREEDY)
    assert num_compiles() == before
