"""Fused decode layers (csrc/decode_layer.cpp) against the same layers op by op
(OCTAVO_CPU_FUSED=0): the same kernels in the same order, so tokens and logprobs are equal."""
import pytest

from octavo import LLM, SamplingParams
from octavo.backend import DecoderLayer
from octavo.loader.gguf import find_default_model
from octavo.testing.tiny_models import make_tiny_model
from octavo_cpu import cpu_has_bf16
from octavo_cpu.kernels import avx512, quantized

pytestmark = pytest.mark.skipif(avx512() is None or not cpu_has_bf16(),
                                reason="fused layers run bf16 on the AVX-512 kernels")
PROMPTS = [[5, 9, 2, 7], list(range(3, 40)), [11] * 19]  # decodes of different lengths in one step


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return lambda family: make_tiny_model(family, str(tmp_path_factory.mktemp(family)))


class Counted:
    """A layer's `fused`, counting the steps it took (returned a result for)."""

    def __init__(self, fused):
        self.fused, self.steps = fused, 0

    def __call__(self, *args):
        out = self.fused(*args)
        self.steps += out is not None
        return out


def run(path: str, monkeypatch, fused: bool, onednn: bool = False, **kwargs) -> tuple[list, int]:
    """Greedy tokens and top-2 logprobs, and how many layer steps ran fused; `onednn` packs
    bf16 linears in oneDNN's layout even where this CPU runs our panels (AMX CPUs always do)."""
    monkeypatch.setenv("OCTAVO_CPU_FUSED", "1" if fused else "0")
    if onednn:
        monkeypatch.setattr("octavo_cpu.worker.bf16_panels", lambda: None)
    llm = LLM(path, dtype="bfloat16", max_model_len=256, num_kv_blocks=64, seed=0, **kwargs)
    layers = [m for m in llm.engine.worker.model.modules() if isinstance(m, DecoderLayer)]
    for layer in layers:
        if layer.fused is not None:
            layer.fused = Counted(layer.fused)
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, logprobs=2)
    outs = llm.generate(prompt_token_ids=PROMPTS, sampling_params=params)
    results = [(o.outputs[0].token_ids, [{t: p.logprob for t, p in lp.items()} for lp in o.outputs[0].logprobs])
               for o in outs]
    return results, sum(layer.fused.steps for layer in layers if layer.fused is not None)


@pytest.mark.parametrize("family, kwargs", [
    ("llama", {}),  # bf16 linears in panels (AVX512-BF16 without AMX) or oneDNN's layout
    ("llama", {"onednn": True}),  # oneDNN's layout on every CPU
    ("qwen2", {}),  # q/k/v bias
    ("mistral", {}),  # a sliding window of 32: the longest prompt outgrows it
    ("qwen2", {"quantization": "int8"}),  # quantized linears with a bias
], ids=["llama", "llama-onednn", "qwen2", "mistral-window", "qwen2-int8"])
def test_fused_decode_equals_op_by_op(family, kwargs, tiny_model, monkeypatch):
    if "quantization" in kwargs and quantized() is None:
        pytest.skip("no quantized kernels here")
    path = tiny_model(family)
    fused, steps = run(path, monkeypatch, True, **kwargs)
    reference, none = run(path, monkeypatch, False, **kwargs)
    assert steps >= 2 * 23 and none == 0  # both layers on (at least) each of 23 decode steps
    assert fused == reference


def test_real_gguf_fused_equals_op_by_op(monkeypatch):
    try:
        path = find_default_model()  # SmolLM2-135M, Q4_1 blocks
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    fused, steps = run(path, monkeypatch, True)
    reference, _ = run(path, monkeypatch, False)
    assert steps >= 30 * 23 and fused == reference


def test_layers_of_other_forms_stay_op_by_op(tiny_model, monkeypatch):
    """Qwen3's q/k norms and Gemma's norms are not the plain form."""
    for family in ("qwen3", "gemma3"):
        assert run(tiny_model(family), monkeypatch, True)[1] == 0
