"""The embedded default model (SmolLM2-135M-Instruct, Q4_1 GGUF) against HF transformers."""
import os

import pytest
import torch

from octavo import LLM, SamplingParams
from octavo.loader.gguf import find_default_model

QUESTIONS = ["What is the capital of France?", "Write a haiku about the sea."]


@pytest.fixture(scope="module")
def gguf_path():
    try:
        return find_default_model()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


def test_smollm2_greedy_matches_hf(gguf_path, monkeypatch):
    """fp32 on both sides, the weights dequantized at load as HF does (a backend's native
    quantized kernels compute differently: their own tests check them). (In bf16,
    transformers 5 keeps GGUF weights packed and computes its matmuls in fp32, so its "bf16"
    is a different computation from a bf16 model.)"""
    monkeypatch.setenv("OCTAVO_CPU_QUANTIZED", "0")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = os.path.split(gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    hf = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                             tokenize=True, return_dict=True)["input_ids"] for q in QUESTIONS]
    expected = []
    for ids in prompts:
        with torch.no_grad():
            out = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                              do_sample=False, max_new_tokens=32, min_new_tokens=32, eos_token_id=None,
                              pad_token_id=tokenizer.eos_token_id)
        expected.append(out[0, len(ids):].tolist())
    del hf

    llm = LLM(gguf_path, dtype="float32", max_model_len=1024, num_kv_blocks=64)
    outs = llm.generate(prompt_token_ids=prompts,
                        sampling_params=SamplingParams(temperature=0, max_tokens=32, ignore_eos=True))
    assert [o.outputs[0].token_ids for o in outs] == expected
    assert "Paris" in outs[0].outputs[0].text


# On quantized kernels (activations rounded to int8, as llama.cpp does) this Q4_1 model's
# greedy answer to "What is the capital of France?" starts "L'Étoile, la Marseillaise",
# token for token what llama.cpp's llama-server answers for the same file (the dequantized
# model says "The capital of France is Paris."): these tests ask what both get right.
QUESTION = [{"role": "user", "content": "What is 2+2?"}]


def test_default_model_chat_is_coherent(gguf_path):
    llm = LLM(max_model_len=1024, num_kv_blocks=64)  # no model named: the embedded default
    out = llm.chat(QUESTION, SamplingParams(temperature=0, max_tokens=24))[0].outputs[0]
    assert "4" in out.text and out.finish_reason in ("stop", "length")


def test_readme_serve_command_answers_a_chat(gguf_path):
    """README's first command, `octavo serve` with no model, through the official client."""
    import openai
    from server_utils import free_port, octavo_serve

    with octavo_serve(["--max-model-len", "1024", "--disable-log-stats"], free_port(), timeout=180) as proc:
        client = openai.OpenAI(base_url=proc.url + "/v1", api_key="none", max_retries=0, timeout=120)
        model = client.models.list().data[0].id
        reply = client.chat.completions.create(model=model, messages=QUESTION, temperature=0, max_tokens=24)
        assert "4" in reply.choices[0].message.content
        stream = client.chat.completions.create(model=model, messages=QUESTION, temperature=0, max_tokens=24,
                                                stream=True)
        streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert streamed == reply.choices[0].message.content
