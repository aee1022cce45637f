"""The pooling runner offline (`LLM.embed`): embeddings equal HF's pooled final hidden states
(fp32 tiny models, within 1e-5) for last-token and mean pooling, read from the model's
sentence-transformers files as vLLM reads them."""
from __future__ import annotations

import argparse
import json
import os

import pytest
import torch
import torch.nn.functional as F
from faulty_backend import FaultyBackend

from octavo import LLM, PoolerConfig, PoolingParams
from octavo.config import ConfigError
from octavo.loader import load_pooler_config
from octavo.testing.tiny_models import hf_hidden_states, make_tiny_model, random_prompts

ATOL = 1e-5
ST_TRANSFORMER = {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}
ST_POOLING = {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}
ST_NORMALIZE = {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}


def write_sentence_transformers(path, mode: str, normalize: bool) -> None:
    """modules.json and 1_Pooling/config.json as sentence-transformers saves them."""
    modules = [ST_TRANSFORMER, ST_POOLING] + ([ST_NORMALIZE] if normalize else [])
    with open(os.path.join(path, "modules.json"), "w") as f:
        json.dump(modules, f)
    os.makedirs(os.path.join(path, "1_Pooling"), exist_ok=True)
    modes = ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens", "weightedmean_tokens", "lasttoken")
    with open(os.path.join(path, "1_Pooling", "config.json"), "w") as f:
        json.dump({"word_embedding_dimension": 64, **{f"pooling_mode_{m}": m == mode for m in modes}}, f)


def close(got: list[float], want: torch.Tensor) -> bool:
    return torch.allclose(torch.tensor(got), want, atol=ATOL, rtol=0)


@pytest.fixture(scope="module")
def last_llm(tiny_model):
    """Last-token pooling (the default), Matryoshka-capable; a step budget of 32 tokens chunks
    the longer prompts."""
    return LLM(tiny_model("llama"), runner="pooling", dtype="float32", num_kv_blocks=64, max_num_batched_tokens=32,
               pooler_config=PoolerConfig(is_matryoshka=True))


def test_last_token_embeddings_equal_hf(tiny_model, last_llm):
    path = tiny_model("llama")
    prompts = random_prompts(path, 6, 3, 90, seed=3)
    prompts.append(prompts[-1])  # the same prompt again: a prefix-cache hit
    outs = last_llm.embed([{"prompt_token_ids": p} for p in prompts])
    assert last_llm.engine.kv.prefix_hits > 0
    for prompt, out in zip(prompts, outs):
        assert out.prompt_token_ids == prompt and out.finished
        assert close(out.outputs.embedding, F.normalize(hf_hidden_states(path, prompt)[-1], dim=-1))
    text = last_llm.embed("Hello world")[0]
    assert text.outputs.hidden_size == 64 and abs(torch.tensor(text.outputs.embedding).norm() - 1) < ATOL


def test_request_normalize_and_matryoshka_dimensions(tiny_model, last_llm):
    prompt = random_prompts(tiny_model("llama"), 1, 20, 20, seed=5)[0]
    hidden = hf_hidden_states(tiny_model("llama"), prompt)[-1]
    raw, short = last_llm.embed([prompt, prompt], [PoolingParams(normalize=False), PoolingParams(dimensions=16)])
    assert close(raw.outputs.embedding, hidden)
    assert close(short.outputs.embedding, F.normalize(hidden[:16], dim=-1))  # truncated, then renormalised
    for dims in (0, 65):
        with pytest.raises(ValueError, match=r"dimensions must be in \[1, 64\]"):
            last_llm.embed(prompt, PoolingParams(dimensions=dims))


@pytest.fixture(scope="module")
def mean_model(tmp_path_factory):
    """A tiny Qwen3 saved with sentence-transformers' mean pooling and no Normalize module."""
    path = str(tmp_path_factory.mktemp("tiny-qwen3-mean"))
    make_tiny_model("qwen3", path)
    write_sentence_transformers(path, "mean_tokens", normalize=False)
    return path


def test_mean_pooling_from_sentence_transformers_files(mean_model):
    llm = LLM(mean_model, runner="pooling", dtype="float32", num_kv_blocks=64)
    config = llm.engine.config
    assert config.pooler_config == PoolerConfig("MEAN", normalize=False)
    assert not config.enable_chunked_prefill and not config.enable_prefix_caching  # whole prompts per step
    prompts = random_prompts(mean_model, 5, 1, 60, seed=4)
    for prompt, out in zip(prompts, llm.embed(prompts)):  # one step: several prompts pooled at once
        assert close(out.outputs.embedding, hf_hidden_states(mean_model, prompt).mean(dim=0))
    with pytest.raises(ValueError, match="does not support Matryoshka"):
        llm.embed(prompts[0], PoolingParams(dimensions=8))
    with pytest.raises(ValueError, match="pooling runner: it embeds prompts"):
        llm.generate(prompts[0])


def test_embed_needs_the_pooling_runner(llama_llm):
    with pytest.raises(ValueError, match="embeddings need the pooling runner"):
        llama_llm.embed("Hello")


class PoolingFaultyBackend(FaultyBackend):
    def create_worker(self, config):
        worker = super().create_worker(config)
        worker.supports_pooling = True  # the CPU worker it wraps pools
        return worker


def test_a_pooling_request_the_worker_fails_on_fails_alone(tiny_model):
    path = tiny_model("llama")
    with pytest.raises(ConfigError, match="cannot run the pooling runner"):
        LLM(path, runner="pooling", backend=FaultyBackend(poison="poison"), dtype="float32", num_kv_blocks=64)
    llm = LLM(path, runner="pooling", backend=PoolingFaultyBackend(poison="poison"), dtype="float32", num_kv_blocks=64)
    engine = llm.engine
    prompts = random_prompts(path, 4, 5, 30, seed=6)
    for i, prompt in enumerate(prompts):
        engine.add_request("poison" if i == 1 else f"ok-{i}", prompt, PoolingParams())
    done = {}
    while engine.has_unfinished_requests():
        done.update((out.request_id, out) for out in engine.step())
    assert done["poison"].error and done["poison"].outputs is None
    for i, prompt in enumerate(prompts):
        if i != 1:
            want = F.normalize(hf_hidden_states(path, prompt)[-1], dim=-1)
            assert torch.allclose(done[f"ok-{i}"].outputs.data, want, atol=ATOL, rtol=0)
    assert engine.kv.num_free_blocks == engine.kv.num_blocks and not engine.outputs.pooling


def test_pooler_config_from_model_files(tmp_path):
    assert load_pooler_config(str(tmp_path)) == PoolerConfig()  # a decoder model: last token, normalised
    (tmp_path / "config.json").write_text(json.dumps({"matryoshka_dimensions": [16, 64]}))
    write_sentence_transformers(str(tmp_path), "lasttoken", normalize=True)
    assert load_pooler_config(str(tmp_path)) == PoolerConfig("LAST", True, True, [16, 64])
    write_sentence_transformers(str(tmp_path), "max_tokens", normalize=True)
    with pytest.raises(ConfigError, match="pooling_mode_max_tokens"):
        load_pooler_config(str(tmp_path))
    with pytest.raises(ConfigError, match="pooling_type must be one of LAST, MEAN"):
        PoolerConfig("CLS")


@pytest.mark.parametrize("argv, runner", [([], "generate"), (["--runner", "pooling"], "pooling"),
                                          (["--convert", "embed"], "pooling")])
def test_runner_flags(argv, runner):
    from octavo.engine.args import add_engine_args, config_from_args

    parser = argparse.ArgumentParser()
    parser.add_argument("model", nargs="?")
    add_engine_args(parser)
    assert config_from_args(parser.parse_args(argv)).runner == runner
