"""The offline API: `LLM(model).generate(prompts, params)` and `LLM.chat(messages)`."""
from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

from tqdm.auto import tqdm

from octavo.backend import Backend
from octavo.config import ConfigError, EngineConfig
from octavo.engine.llm_engine import LLMEngine, Prompt
from octavo.outputs import RequestOutput
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
        elif isinstance(prompts, (str, dict)) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        if sampling_params is None or isinstance(sampling_params, SamplingParams):
            sampling_params = [sampling_params or self.get_default_sampling_params()] * len(prompts)
        if len(sampling_params) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(sampling_params)} sampling params")
        ids = []
        for prompt, params in zip(prompts, sampling_params):
            rid = str(next(self._ids))
            params = dataclasses.replace(params, output_kind=RequestOutputKind.FINAL_ONLY)
            self.engine.add_request(rid, prompt, params)
            ids.append(rid)
        return self._run(ids, use_tqdm)

    def chat(self, messages: list[dict] | list[list[dict]],
             sampling_params: SamplingParams | Sequence[SamplingParams] | None = None, *,
             chat_template: str | None = None, add_generation_prompt: bool = True,
             tools: list[dict] | None = None, use_tqdm: bool = False) -> list[RequestOutput]:
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        prompts = [{"prompt_token_ids": self.engine.tokenizer.apply_chat_template(
            conv, chat_template=chat_template, add_generation_prompt=add_generation_prompt,
            tools=tools, tokenize=True, return_dict=True)["input_ids"]} for conv in conversations]
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm)

    def _run(self, ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        results: dict[str, RequestOutput] = {}
        bar = tqdm(total=len(ids), desc="generating", disable=not use_tqdm)
        while self.engine.has_unfinished_requests():
            for out in self.engine.step():
                if out.finished:
                    results[out.request_id] = out
                    bar.update(1)
        bar.close()
        return [results[rid] for rid in ids]
