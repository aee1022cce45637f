"""The CUDA backend on a real GPU: the engine conformance checks with CUDA graphs, and graph
replay against eager. Skipped without a CUDA device (CI has none); run on a GPU machine with
`OCTAVO_TRITON_DEVICE=cuda python -m pytest backends/cuda`.
"""
import pytest
import torch

from octavo import LLM, SamplingParams
from octavo.testing import checks
from octavo.testing.tiny_models import make_tiny_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or torch.version.hip is not None,
                                reason="needs an NVIDIA GPU")
GRAPH_SIZES = [1, 2, 4, 8, 16]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    return make_tiny_model("llama", str(tmp_path_factory.mktemp("llama")))


@pytest.fixture
def replays(monkeypatch):
    """Counts CUDA graph replays, so a test can tell graphs ran and were not bypassed."""
    count = [0]
    original = torch.cuda.CUDAGraph.replay

    def replay(self):
        count[0] += 1
        return original(self)

    monkeypatch.setattr(torch.cuda.CUDAGraph, "replay", replay)
    return count


def make_llm(path, **kwargs):
    kwargs.setdefault("num_kv_blocks", 256)
    return LLM(path, device="cuda", cuda_graph_sizes=GRAPH_SIZES, **kwargs)


@pytest.mark.parametrize("scenario", sorted(checks.SCENARIOS))
def test_greedy_matches_hf_with_graphs(tiny_llama, scenario, replays):
    checks.check_greedy_matches_hf(make_llm, tiny_llama, scenario)
    assert replays[0] > 0


def test_logprobs_match_hf(tiny_llama):
    checks.check_logprobs_match_hf(make_llm, tiny_llama, atol=1e-3)


def test_graph_replay_equals_eager(tiny_llama, replays):
    """13 sequences (padded to a graph of 16) and 40 (beyond the largest: eager). fp32, so
    that cuBLAS choosing other kernels for padded shapes cannot flip a greedy token."""
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    prompts = [checks.varied_prompts(1000, seed)[s % 10] for seed in range(4) for s in range(10)]
    outs = {}
    for eager in (False, True):
        llm = LLM(tiny_llama, device="cuda", dtype="float32", num_kv_blocks=512,
                  cuda_graph_sizes=GRAPH_SIZES, enforce_eager=eager)
        graphs = llm.engine.worker.runner.graphs
        assert (graphs is None) if eager else (sorted(graphs.graphs) == GRAPH_SIZES)
        outs[eager] = [[o.outputs[0].token_ids for o in llm.generate(prompt_token_ids=batch, sampling_params=params)]
                       for batch in (prompts[:13], prompts)]
        checks.assert_no_leaks(llm)
        del llm
    assert replays[0] > 0
    assert outs[False] == outs[True]
