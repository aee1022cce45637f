"""Models on the quantized kernels. Real GGUFs: the weights stay in their blocks, so the math
is not the dequantized model's (the activations are rounded to int8 per 32 values, as
llama.cpp does); perplexity on a fixed text must stay within 1% of the dequantized model's,
and greedy answers must stay right. Dense checkpoints: quantized at load (`quantization`)."""
import math
import os

import pytest
import torch

from octavo import LLM, SamplingParams
from octavo.config import ConfigError
from octavo.loader.gguf import find_default_model
from octavo.testing.real_models import qwen_coder_gguf
from octavo.testing.tiny_models import make_tiny_model
from octavo_cpu.kernels import quantized
from octavo_cpu.quant import GGML_TYPES, SCHEMES, QuantLinear

pytestmark = pytest.mark.skipif(quantized() is None, reason="the quantized kernels need x86-64 with AVX2 and a build")
TEXT = os.path.join(os.path.dirname(__file__), "data", "perplexity.txt")


def perplexity(llm: LLM) -> float:
    """exp of the mean negative logprob of each token of TEXT given the ones before it."""
    ids = llm.get_tokenizer()(open(TEXT).read())["input_ids"]
    out = llm.generate(prompt_token_ids=[ids], sampling_params=SamplingParams(max_tokens=1, prompt_logprobs=0))[0]
    logprobs = [position[token].logprob for position, token in zip(out.prompt_logprobs[1:], ids[1:])]
    return math.exp(-sum(logprobs) / len(logprobs))


def model_path(name: str) -> str:
    try:
        return find_default_model() if name == "smollm2-q4_1" else qwen_coder_gguf()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize("name", ["smollm2-q4_1", "qwen2.5-coder-q4_k_m"])
def test_quantized_model_keeps_perplexity_and_answers(name, monkeypatch):
    path = model_path(name)
    llm = LLM(path, dtype="bfloat16", max_model_len=1024, num_kv_blocks=96)
    linears = [m for m in llm.engine.worker.model.modules() if isinstance(m, QuantLinear)]
    assert len(linears) == 4 * llm.engine.model_config.num_layers + 1  # qkv, o, gate_up, down; lm_head
    quantized_ppl = perplexity(llm)
    answer = llm.chat([{"role": "user", "content": "What is 2+2?"}],
                      SamplingParams(temperature=0, max_tokens=16))[0].outputs[0].text
    del llm
    monkeypatch.setenv("OCTAVO_CPU_QUANTIZED", "0")
    dense_ppl = perplexity(LLM(path, dtype="bfloat16", max_model_len=1024, num_kv_blocks=96))
    assert abs(quantized_ppl / dense_ppl - 1) < 0.01, (quantized_ppl, dense_ppl)
    assert "4" in answer


def prompt_logprobs(llm: LLM, ids: list[int]) -> torch.Tensor:
    out = llm.generate(prompt_token_ids=[ids], sampling_params=SamplingParams(max_tokens=1, prompt_logprobs=0))[0]
    return torch.tensor([position[token].logprob for position, token in zip(out.prompt_logprobs[1:], ids[1:])])


@pytest.mark.parametrize("scheme, tolerance", [("int8", 0.1), ("int4", 0.9)])
def test_dense_checkpoint_quantized_at_load(scheme, tolerance, tmp_path):
    """`quantization` turns a dense checkpoint's linears into Q8_0 (int8) or Q4_1 (int4 per
    32 weights) at load; the prompt's logprobs stay near the dense model's (a tiny random
    model: measured mean differences 0.05 and 0.45 nats, the bounds twice that)."""
    path = make_tiny_model("qwen2", str(tmp_path))  # q/k/v biases too
    ids = list(range(20, 84))
    dense = prompt_logprobs(LLM(path, dtype="float32", num_kv_blocks=16), ids)
    llm = LLM(path, dtype="float32", num_kv_blocks=16, quantization=scheme)
    linears = [m for m in llm.engine.worker.model.modules() if isinstance(m, QuantLinear)]
    assert len(linears) == 4 * llm.engine.model_config.num_layers + 1
    assert {ggml_type for m in linears for _, _, ggml_type, _ in m.parts} == {GGML_TYPES[SCHEMES[scheme]]}
    ours = prompt_logprobs(llm, ids)
    assert (ours - dense).abs().mean() < tolerance, (ours - dense).abs().mean()


def test_unknown_quantization_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="--quantization: expected one of none, int8, int4, got 'fp4'"):
        LLM(make_tiny_model("llama", str(tmp_path)), num_kv_blocks=16, quantization="fp4")
