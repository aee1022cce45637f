"""The embedded default model (SmolLM2-135M-Instruct, Q4_1 GGUF) against HF transformers."""
import os

import pytest
import torch

from octavo import LLM, SamplingParams
QUESTIONS = ["What is the capital of France?", "Write a haiku about the sea."]


def test_smollm2_greedy_matches_hf(smollm2_gguf, monkeypatch):
    """fp32 on both sides, the weights dequantized at load as HF does (a backend's native
    quantized kernels compute differently: their own tests check them). (In bf16,
    transformers 5 keeps GGUF weights packed and computes its matmuls in fp32, so its "bf16"
    is a different computation from a bf16 model.)"""
    monkeypatch.setenv("OCTAVO_CPU_QUANTIZED", "0")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = os.path.split(smollm2_gguf)
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

    llm = LLM(smollm2_gguf, dtype="float32", max_model_len=1024, num_kv_blocks=64)
    outs = llm.generate(prompt_token_ids=prompts,
                        sampling_params=SamplingParams(temperature=0, max_tokens=32, ignore_eos=True))
    assert [o.outputs[0].token_ids for o in outs] == expected
    assert "Paris" in outs[0].outputs[0].text


# On quantized kernels (activations rounded to int8, as llama.cpp does) this Q4_1 model's
# greedy answer to "What is the capital of France?" starts "L'Étoile, la Marseillaise",
# token for token what llama.cpp's llama-server answers for the same file (the dequantized
# model says "The capital of France is Paris."): these tests ask what both get right.
QUESTION, ANSWER = "What is 2+2?", "4"


def test_default_model_chat_is_coherent(smollm2_gguf):
    llm = LLM(max_model_len=1024, num_kv_blocks=64)  # no model named: the embedded default
    out = llm.chat([{"role": "user", "content": QUESTION}], SamplingParams(temperature=0, max_tokens=24))[0].outputs[0]
    assert ANSWER in out.text and out.finish_reason in ("stop", "length")


def test_readme_serve_command_answers_a_chat(smollm2_gguf):
    """README's first command, `octavo serve` with no model, through the official client."""
    from server_utils import check_chat, free_port, octavo_serve

    with octavo_serve(["--max-model-len", "1024", "--disable-log-stats"], free_port(), timeout=180) as proc:
        check_chat(proc.url, QUESTION, ANSWER)
