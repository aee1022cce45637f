"""The static-shape sampler against the core's `StepSampler` (greedy choices, logprobs, the
logit processors, grammar masks), and its counter-based random draws."""
import math

import pytest
import torch

from octavo.backend import (GrammarBitmask, ModelRunnerOutput, RequestState, SamplerOps, SamplingParams,
                            StepSampler)
from octavo_tpu.sampler import FULL, GREEDY, RANDOM, build_sampling, dummy_sampling, sample

VOCAB = 40
K = 5  # top logprobs the sampler computes


def state(i: int, prompt=(5, 6, 7), output=(), **params) -> RequestState:
    return RequestState(f"r{i}", list(prompt) + list(output), len(prompt), SamplingParams(**params), eos_token_id=2)


def ours(reqs, logits, grammar=None, num_rows=8, device="cpu"):
    variant, tensors = build_sampling(reqs, num_rows, VOCAB, grammar)
    padded = torch.zeros(num_rows, VOCAB)
    padded[:len(reqs)] = logits
    out = sample(padded.to(device), tensors.to(device), variant, K)
    if device != "cpu":
        import torch_xla

        torch_xla.sync()
    return variant, out


def core(reqs, logits, grammar=None):
    out = ModelRunnerOutput([-1] * len(reqs))
    StepSampler(SamplerOps(), torch.device("cpu")).sample(reqs, list(range(len(reqs))), logits.clone(), grammar, out)
    return out


GREEDY_CASES = {
    "plain": [{}],
    "bias": [{"logit_bias": {3: 5.0, 4: -100.0}}],
    "allowed": [{"allowed_token_ids": [7, 9, 11]}],
    "min_tokens": [{"min_tokens": 4, "stop_token_ids": [8]}],
    "penalties": [{"repetition_penalty": 1.5, "presence_penalty": 0.7, "frequency_penalty": 0.4}],
    "mixed": [{}, {"logit_bias": {1: 3.0}}, {"allowed_token_ids": [0, 1, 2]}, {"min_tokens": 9},
              {"repetition_penalty": 0.6}],
}


@pytest.mark.parametrize("case", sorted(GREEDY_CASES))
def test_greedy_tokens_and_logprobs_match_the_core(case):
    g = torch.Generator().manual_seed(len(case))
    reqs = [state(i, prompt=(2, 8, 12, 5), output=(5, 5, 13), temperature=0.0, logprobs=K, **p)
            for i, p in enumerate(GREEDY_CASES[case])]
    logits = torch.randn(len(reqs), VOCAB, generator=g) * 3
    for i in range(len(reqs)):  # make the blocked and penalised tokens the favourites
        logits[i, [2, 4, 5, 8, 13]] += 6.0
    variant, got = ours(reqs, logits)
    assert variant == (GREEDY if case == "plain" else FULL)
    want = core(reqs, logits)
    assert got.token_ids[:len(reqs)].tolist() == want.sampled_token_ids
    for i, r in enumerate(reqs):
        lp = want.logprobs[r.request_id]
        assert got.logprob_token_ids[i].tolist() == lp.token_ids[0]
        torch.testing.assert_close(got.logprobs[i].tolist(), lp.logprobs[0], rtol=0, atol=1e-5)
        assert got.ranks[i].item() == lp.ranks[0]


def test_grammar_masks_rows_and_forbids_ids_past_the_mask():
    reqs = [state(i, temperature=0.0, logprobs=2) for i in range(3)]
    logits = torch.randn(3, VOCAB, generator=torch.Generator().manual_seed(3))
    words = torch.zeros(2, 1, dtype=torch.int32)  # 32 ids wide: ids 32..39 are past the mask
    words[0, 0] = (1 << 4) | (1 << 30)
    words[1, 0] = 1 << 17
    grammar = GrammarBitmask([0, 2], words)
    _, got = ours(reqs, logits, (grammar.bitmask, grammar.rows))
    want = core(reqs, logits, grammar)
    assert got.token_ids[:3].tolist() == want.sampled_token_ids
    assert got.token_ids[2].item() == 17
    for i in range(3):
        torch.testing.assert_close(got.logprobs[i, :3].tolist(), want.logprobs[f"r{i}"].logprobs[0], atol=1e-5,
                                   rtol=0)


def exact_draws(params: dict, logits: torch.Tensor, n: int, seed: int = 7) -> torch.Tensor:
    """Tokens sampled for one seeded request at counters 0..n-1 (all in one batch)."""
    reqs = [state(i, output=[0] * i, seed=seed, **params) for i in range(n)]
    variant, out = ours(reqs, logits.expand(n, -1), num_rows=n)
    assert variant == RANDOM
    return out.token_ids


def test_random_draws_follow_the_distribution():
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])
    logits = torch.full((VOCAB,), -math.inf)
    logits[:4] = probs.log()
    counts = torch.bincount(exact_draws({"temperature": 1.0}, logits, 4000), minlength=VOCAB)[:4].float()
    assert counts.sum() == 4000
    chi2 = (((counts - 4000 * probs) ** 2) / (4000 * probs)).sum().item()
    assert chi2 < 16.3, counts  # p = 0.001 at 3 degrees of freedom


@pytest.mark.parametrize("params,allowed", [({"top_k": 2}, {2, 3}), ({"top_p": 0.5}, {2, 3}),
                                            ({"min_p": 0.8}, {3}), ({"temperature": 0.02}, {3})])
def test_truncation(params, allowed):
    logits = torch.full((VOCAB,), -math.inf)
    logits[:4] = torch.tensor([0.1, 0.2, 0.3, 0.4]).log()
    drawn = set(exact_draws({"temperature": 1.0, **params}, logits, 300).tolist())
    assert drawn == allowed


def test_seeded_rows_do_not_depend_on_the_batch():
    logits = torch.randn(VOCAB, generator=torch.Generator().manual_seed(1))
    alone = [ours([state(0, output=[1] * c, seed=11, temperature=1.0)], logits[None], num_rows=8)[1].token_ids[0]
             for c in range(20)]
    crowd = [ours([state(1, temperature=0.9), state(0, output=[1] * c, seed=11, temperature=1.0),
                   state(2, temperature=0.0)], logits.expand(3, -1), num_rows=16)[1].token_ids[1] for c in range(20)]
    assert alone == crowd
    assert len(set(t.item() for t in alone)) > 3  # the counter moves the draws


def test_same_results_on_the_xla_device():
    """Every variant's graph on XLA gives the CPU's results (hash draws included)."""
    import torch_xla

    reqs = [state(0, temperature=0.0), state(1, seed=3, temperature=0.8, top_k=5, top_p=0.9),
            state(2, seed=4, temperature=1.3, min_p=0.1, logit_bias={6: 2.0}, repetition_penalty=1.2)]
    logits = torch.randn(3, VOCAB, generator=torch.Generator().manual_seed(5))
    for rows in (reqs[:1], reqs[:2], reqs):
        variant, cpu = ours(rows, logits[:len(rows)])
        _, xla = ours(rows, logits[:len(rows)], device=torch_xla.device())
        assert xla.token_ids.cpu().tolist() == cpu.token_ids.tolist(), variant
        torch.testing.assert_close(xla.logprobs.cpu(), cpu.logprobs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", [GREEDY, RANDOM, FULL])
def test_padding_rows_sample_greedily(variant):
    out = sample(torch.randn(8, VOCAB), dummy_sampling(variant, 8, VOCAB), variant, K)
    assert out.token_ids.shape == (8,) and out.logprobs.shape == (8, K + 1)
