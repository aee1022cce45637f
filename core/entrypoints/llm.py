"""The offline API: `LLM(model).generate(prompts, params)`, `LLM.chat(messages)` and, with
`runner="pooling"`, `LLM.embed(prompts)`."""
from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

from tqdm.auto import tqdm

from octavo.backend import Backend
from octavo.config import ConfigError, EngineConfig
from octavo.engine.llm_engine import LLMEngine, Prompt
from octavo.outputs import EmbeddingRequestOutput, PoolingRequestOutput, RequestOutput
from octavo.pooling_params import PoolingParams
from octavo.sampling_params import RequestOutputKind, SamplingParams


class LLM:
    def __init__(self, model: str | None = None, *, backend: Backend | None = None, **engine_args):
        """`engine_args`: EngineConfig's fields (`tensor_parallel_size=2`, ...), and the device
        backend's options by name."""
        config = EngineConfig.from_kwargs(model=model, **engine_args)
        if config.data_parallel_size != 1:
            raise ConfigError("data_parallel_size: LLM runs one engine; several run behind one "
                              "`octavo serve --data-parallel-size N`")
        self.engine = LLMEngine(config, backend)
        self._ids = itertools.count()

    def get_tokenizer(self):
        return self.engine.tokenizer

    def get_default_sampling_params(self) -> SamplingParams:
        """SamplingParams with the model's generation-config defaults (--generation-config)."""
        return SamplingParams(**self.engine.generation_defaults)

    def generate(self, prompts: Prompt | Sequence[Prompt] | None = None,
                 sampling_params: SamplingParams | Sequence[SamplingParams] | None = None, *,
                 prompt_token_ids: Sequence[list[int]] | None = None,
                 use_tqdm: bool = False) -> list[RequestOutput]:
        """Outputs in prompt order. A list of ints is one tokenized prompt."""
        if prompt_token_ids is not None:
            prompts = [{"prompt_token_ids": ids} for ids in prompt_token_ids]
        prompts = _prompt_list(prompts)
        params = _per_prompt(sampling_params or self.get_default_sampling_params(), SamplingParams, prompts)
        return self._run([dataclasses.replace(p, output_kind=RequestOutputKind.FINAL_ONLY) for p in params],
                         prompts, use_tqdm)

    def embed(self, prompts: Prompt | Sequence[Prompt], pooling_params: PoolingParams | Sequence[PoolingParams]
              | None = None, *, use_tqdm: bool = False) -> list[EmbeddingRequestOutput]:
        """One embedding per prompt, in prompt order (`out.outputs.embedding`); needs
        `LLM(model, runner="pooling")`."""
        prompts = _prompt_list(prompts)
        params = _per_prompt(pooling_params or PoolingParams(), PoolingParams, prompts)
        return [EmbeddingRequestOutput.from_base(out) for out in self._run(params, prompts, use_tqdm)]

    def chat(self, messages: list[dict] | list[list[dict]],
             sampling_params: SamplingParams | Sequence[SamplingParams] | None = None, *,
             chat_template: str | None = None, add_generation_prompt: bool = True,
             tools: list[dict] | None = None, use_tqdm: bool = False) -> list[RequestOutput]:
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        prompts = [{"prompt_token_ids": self.engine.tokenizer.apply_chat_template(
            conv, chat_template=chat_template, add_generation_prompt=add_generation_prompt,
            tools=tools, tokenize=True, return_dict=True)["input_ids"]} for conv in conversations]
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm)

    def _run(self, params: list[SamplingParams | PoolingParams], prompts: list[Prompt],
             use_tqdm: bool) -> list[RequestOutput | PoolingRequestOutput]:
        ids = []
        for prompt, p in zip(prompts, params):
            rid = str(next(self._ids))
            self.engine.add_request(rid, prompt, p)
            ids.append(rid)
        results: dict[str, RequestOutput | PoolingRequestOutput] = {}
        bar = tqdm(total=len(ids), desc="processed prompts", disable=not use_tqdm)
        while self.engine.has_unfinished_requests():
            for out in self.engine.step():
                if out.finished:
                    results[out.request_id] = out
                    bar.update(1)
        bar.close()
        return [results[rid] for rid in ids]


def _prompt_list(prompts: Prompt | Sequence[Prompt]) -> list[Prompt]:
    """One prompt (text, a dict, or a list of ints: one tokenized prompt) or several."""
    if isinstance(prompts, (str, dict)) or (prompts and isinstance(prompts[0], int)):
        return [prompts]
    return list(prompts)


def _per_prompt(params, kind: type, prompts: list[Prompt]) -> list:
    """One params object for all prompts, or one per prompt."""
    if isinstance(params, kind):
        return [params] * len(prompts)
    if len(params) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(params)} {kind.__name__} objects")
    return list(params)
