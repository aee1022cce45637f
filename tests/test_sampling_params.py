"""Sampling behaviour that belongs to the core, not to a backend: n > 1 shares the prompt's
blocks, and the engine seed makes unseeded sampling reproducible. What every sampling
parameter does is checked per backend by the conformance kit (`octavo.testing.checks`)."""
from octavo import SamplingParams
from octavo.testing.checks import assert_no_leaks, varied_prompts


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


def test_engine_seed_makes_unseeded_sampling_reproducible(tiny_model):
    from octavo import LLM

    hot = SamplingParams(temperature=1.5, max_tokens=16, ignore_eos=True)
    runs = [LLM(tiny_model("llama"), dtype="float32", num_kv_blocks=64, seed=s).generate(
        prompt_token_ids=[varied_prompts(1000)[3]], sampling_params=hot)[0].outputs[0].token_ids for s in (7, 7, 8)]
    assert runs[0] == runs[1] and runs[0] != runs[2]
