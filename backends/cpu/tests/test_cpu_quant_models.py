"""Real GGUF models on the quantized kernels: the weights stay in their blocks, so the math is
not the dequantized model's (the activations are rounded to int8 per 32 values, as llama.cpp
does); perplexity on a fixed text must stay within 1% of the dequantized model's, and greedy
answers must stay right."""
import math
import os

import pytest
import torch

from octavo import LLM, SamplingParams
from octavo.loader.gguf import find_default_model
from octavo.testing.real_models import qwen_coder_gguf
from octavo_cpu.kernels import quantized
from octavo_cpu.quant import QuantLinear

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
