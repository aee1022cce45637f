"""The synchronous engine: add requests, call `step()` until done.

One step = schedule -> worker.execute -> scheduler.update -> output processing. The async
engine and the offline `LLM` both drive this loop.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch

from octavo.backend import Backend
from octavo.config import ConfigError, EngineConfig, ModelConfig
from octavo.devices import loadable_backends, select_backend
from octavo.engine.options import parse_options
from octavo.generation_config import generation_defaults
from octavo.engine.output_processor import OutputProcessor, ParentState, SequenceState
from octavo.detokenizer import IncrementalDetokenizer
from octavo.kv_cache import KVCacheManager
from octavo.loader import load_tokenizer, resolve_model_path
from octavo.outputs import RequestOutput
from octavo.request import Request, RequestStatus
from octavo.sampling_params import RequestOutputKind, SamplingParams
from octavo.scheduler import Scheduler, SchedulerStats
from octavo.structured_output import BACKENDS, GrammarError, GrammarState, StructuredOutputManager

logger = logging.getLogger("octavo")

Prompt = str | list[int] | dict[str, Any]
GRAMMAR_WAIT_S = 0.02  # an idle step's longest wait for a compiling grammar (new requests wait that long)


class InputError(ValueError):
    """A request the engine cannot serve (too long, bad token ids); `param` names the field."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class LLMEngine:
    def __init__(self, config: EngineConfig, backend: Backend | None = None):
        """`backend` bypasses device selection (a backend class that is not registered, e.g.
        one emulated on the CPU for testing); `config.device_options` then replace its options."""
        check_config(config)
        self.config = config
        torch.manual_seed(config.seed)  # unseeded requests draw from the global generators
        if backend is None:
            backend = select_backend(config.device, config.device_options)
        elif config.device_options:
            backend.options = parse_options(type(backend), config.device_options, loadable_backends())
        self.backend = backend
        self.backend.check_and_update_config(config)
        self.worker = self.backend.create_worker(config)
        self.model_config: ModelConfig = self.worker.load_model()
        self.tokenizer = load_tokenizer(config.model, config.tokenizer)
        self.max_model_len = self.model_config.max_model_len
        if config.max_num_batched_tokens is None:
            config.max_num_batched_tokens = max(2048, config.max_num_seqs) if config.enable_chunked_prefill \
                else max(self.max_model_len, config.max_num_seqs)
        num_blocks = config.num_kv_blocks or self.worker.num_kv_blocks(config.block_size)
        self.worker.allocate_kv_cache(num_blocks, config.block_size)
        self.kv = KVCacheManager(num_blocks, config.block_size, config.enable_prefix_caching)
        self.eos_token_id = self.tokenizer.eos_token_id
        self.structured_output = StructuredOutputManager(config.guided_decoding_backend, self.tokenizer,
                                                         self.model_config.vocab_size, self.eos_token_id)
        self.scheduler = Scheduler(self.kv, config.max_num_seqs, config.max_num_batched_tokens,
                                   config.enable_chunked_prefill, self.structured_output)
        self.outputs = OutputProcessor(self.tokenizer)
        self.generation_defaults = generation_defaults(resolve_model_path(config.model), config.generation_config,
                                                       config.override_generation_config)
        if self.generation_defaults:
            logger.info("sampling defaults from the model's generation config (--generation-config vllm "
                        "turns them off): %s", ", ".join(f"{k}={v}" for k, v in self.generation_defaults.items()))
        self.worker.warm_up()
        logger.info("engine ready: %s on %s (%s), %d KV blocks of %d tokens", self.model_config.architecture,
                    self.backend.name, config.dtype, num_blocks, config.block_size)

    # ------------------------------------------------------------------ requests

    def tokenize(self, prompt: Prompt) -> tuple[str | None, list[int]]:
        if isinstance(prompt, dict):
            if "prompt_token_ids" in prompt:
                return prompt.get("prompt"), list(prompt["prompt_token_ids"])
            prompt = prompt["prompt"]
        if isinstance(prompt, str):
            return prompt, self.tokenizer(prompt).input_ids
        return None, list(prompt)

    def make_request(self, request_id: str, prompt: Prompt, params: SamplingParams) -> ParentState:
        """Validate and tokenize (safe to call from any thread); `add` then enqueues it."""
        text, token_ids = self.tokenize(prompt)
        if not token_ids:
            raise InputError("the prompt is empty", "prompt")
        vocab = self.model_config.vocab_size
        if min(token_ids) < 0 or max(token_ids) >= vocab:
            raise InputError(f"token ids must be in [0, {vocab})", "prompt")
        if len(token_ids) >= self.max_model_len:
            raise InputError(f"the prompt has {len(token_ids)} tokens; this model's maximum context "
                             f"length is {self.max_model_len} tokens, and at least one must be "
                             "left to generate", "prompt")
        if self.kv.blocks_needed(len(token_ids) + 1) > self.kv.num_blocks:
            raise InputError(f"the prompt needs more KV cache than the engine has "
                             f"({self.kv.num_blocks * self.kv.block_size} tokens)", "prompt")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(params, name)
            if value is not None and value > self.config.max_logprobs:
                raise InputError(f"{name} must be at most {self.config.max_logprobs}, got {value}", name)
        grammar = None
        if params.structured_outputs is not None:
            try:
                grammar = self.structured_output.submit(params.structured_outputs)
            except GrammarError as exc:
                raise InputError(str(exc), "structured_outputs") from None
        seqs = [SequenceState(i, request_id if params.num_sequences == 1 else f"{i}_{request_id}",
                              self._detokenizer(token_ids, params),
                              logprobs=[] if params.logprobs is not None else None)
                for i in range(params.num_sequences)]
        return ParentState(request_id, text, token_ids, params, seqs, grammar=grammar)

    def _detokenizer(self, prompt_ids: list[int], params: SamplingParams) -> IncrementalDetokenizer:
        return IncrementalDetokenizer(
            self.tokenizer, prompt_ids, skip_special_tokens=params.skip_special_tokens,
            spaces_between_special_tokens=params.spaces_between_special_tokens, stop=params.stop,
            include_stop_str_in_output=params.include_stop_str_in_output, min_tokens=params.min_tokens,
            stream_holdback=params.output_kind == RequestOutputKind.DELTA)

    def add(self, parent: ParentState) -> None:
        if self.outputs.has(parent.request_id):
            raise InputError(f"request id {parent.request_id!r} is already running", "request_id")
        self.outputs.add(parent)
        params = parent.params
        max_tokens = self.max_model_len - len(parent.prompt_token_ids)
        if params.max_tokens is not None:
            max_tokens = min(max_tokens, params.max_tokens)
        for seq in parent.seqs:
            child = params
            if params.num_sequences > 1:
                child = dataclasses.replace(
                    params, n=1, best_of=None,
                    seed=None if params.seed is None else params.seed + seq.index,
                    logprobs=params.logprobs if params.logprobs is not None or params.n == params.num_sequences
                    else 0)
            grammar = None
            if parent.grammar is not None:
                grammar = GrammarState(parent.grammar, params.structured_outputs.reasoning_end_ids)
            self.scheduler.add_request(Request(seq.request_id, parent.prompt_token_ids, child, max_tokens,
                                               self.eos_token_id, parent.arrival_time, grammar=grammar))

    def add_request(self, request_id: str, prompt: Prompt, params: SamplingParams | None = None) -> None:
        self.add(self.make_request(request_id, prompt, params or SamplingParams()))

    def abort_request(self, request_id: str) -> RequestOutput | None:
        self.scheduler.finish_requests(self.outputs.child_ids(request_id), RequestStatus.FINISHED_ABORTED)
        return self.outputs.abort(request_id)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished()

    # ------------------------------------------------------------------ step

    def step(self) -> list[RequestOutput]:
        batch = self.scheduler.schedule()
        failed = self._fail_grammars()
        if not batch.requests:
            self.structured_output.wait_for_compile(GRAMMAR_WAIT_S)  # idle until a grammar is ready
            return failed
        self.worker.execute_model(batch)
        grammar = self.scheduler.grammar_bitmask(batch)  # on the host while the device computes
        result = self.worker.sample_tokens(grammar)
        sampled = self.scheduler.update(batch, result)
        outputs, stopped = self.outputs.process(sampled, result)
        self.scheduler.finish_requests(stopped, RequestStatus.FINISHED_STOPPED)
        return failed + outputs

    def _fail_grammars(self) -> list[RequestOutput]:
        """Abort the requests whose grammar failed to compile (it parsed, so this is rare)."""
        failed = []
        for child_id in self.scheduler.failed_ids:
            parent_id = self.outputs.parent_id(child_id)
            out = self.abort_request(parent_id) if parent_id is not None else None
            if out is not None:
                failed.append(out)
        self.scheduler.failed_ids.clear()
        return failed

    def stats(self) -> SchedulerStats:
        return self.scheduler.stats()

    def shutdown(self) -> None:
        self.structured_output.shutdown()
        self.worker.shutdown()


def check_config(config: EngineConfig) -> None:
    """Reject contradictory settings before anything loads."""
    if config.max_num_seqs < 1:
        raise ConfigError(f"max_num_seqs must be at least 1, got {config.max_num_seqs}")
    if config.max_num_batched_tokens is not None and config.max_num_batched_tokens < 1:
        raise ConfigError(f"max_num_batched_tokens must be positive, got {config.max_num_batched_tokens}")
    if config.max_model_len is not None and config.max_model_len < 2:
        raise ConfigError(f"max_model_len must be at least 2, got {config.max_model_len}")
    if config.guided_decoding_backend not in BACKENDS:
        raise ConfigError(f"guided_decoding_backend must be one of {', '.join(BACKENDS)}, "
                          f"got {config.guided_decoding_backend!r}")

