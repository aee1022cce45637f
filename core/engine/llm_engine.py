"""The synchronous engine: add requests, call `step()` until done.

One step = schedule -> worker.execute_model / sample_tokens -> scheduler.update -> output
processing. The async engine and the offline `LLM` both drive this loop. The worker is the
backend's, in this process, or an executor over worker processes (tensor-parallel ranks, or
the one worker of a data-parallel replica): the engine drives both alike.

A request can fail without taking others with it: every sampling value that could break a
step is refused in `make_request`; a step that raises anyway is run again in smaller groups
until the request(s) at fault are found (engine/isolation.py), and those end with finish
reason "error" while the others go on. Only a broken engine raises out of `step()`.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch

from octavo.backend import Backend, ModelRunnerOutput, SchedulerOutput
from octavo.config import RUNNERS, ConfigError, EngineConfig, ModelConfig
from octavo.devices import loadable_backends, select_backend
from octavo.engine.isolation import FaultIsolator, StepFaults
from octavo.engine.options import parse_options
from octavo.executor import check_parallel_config, create_executor
from octavo.executor.base import Executor
from octavo.generation_config import generation_defaults
from octavo.engine.output_processor import OutputProcessor, ParentState, PoolingState, SequenceState
from octavo.detokenizer import IncrementalDetokenizer
from octavo.kv_cache import KVCacheManager
from octavo.loader import load_pooler_config, load_tokenizer, resolve_model_path
from octavo.outputs import PoolingRequestOutput, RequestOutput
from octavo.pooling_params import PoolingParams
from octavo.request import Request, RequestStatus
from octavo.sampling_params import RequestOutputKind, SamplingParams
from octavo.scheduler import Scheduler, SchedulerStats
from octavo.structured_output import BACKENDS, GrammarError, GrammarState, StructuredOutputManager

logger = logging.getLogger("octavo")

Prompt = str | list[int] | dict[str, Any]
_NO_SAMPLING = SamplingParams()  # what a pooling request carries as sampling params: it never samples
GRAMMAR_WAIT_S = 0.02  # an idle step's longest wait for a compiling grammar (new requests wait that long)


class InputError(ValueError):
    """A request the engine cannot serve (too long, bad token ids); `param` names the field."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class LLMEngine:
    def __init__(self, config: EngineConfig, backend: Backend | None = None, replica: int = 0):
        """`backend` bypasses device selection (a backend class that is not registered, e.g.
        one emulated on the CPU for testing); `config.device_options` then replace its options.
        `replica`: which data-parallel replica this engine is (it picks the workers' devices)."""
        check_config(config)
        if config.runner == "pooling":
            settle_pooling(config)
        self.config = config
        torch.manual_seed(config.seed)  # unseeded requests draw from the global generators
        if backend is None:
            backend = select_backend(config.device, config.device_options)
        elif config.device_options:
            backend.options = parse_options(type(backend), config.device_options, loadable_backends())
        self.backend = backend
        self.backend.check_and_update_config(config)
        check_parallel_config(config, self.backend)
        self.worker = create_executor(config, self.backend, replica)
        if config.runner == "pooling" and not self.worker.supports_pooling:
            raise ConfigError(f"the {self.backend.name} backend cannot run the pooling runner (embeddings)")
        self.model_config: ModelConfig = self.worker.load_model()
        self.tokenizer = load_tokenizer(config.model, config.tokenizer)
        num_blocks = config.num_kv_blocks or self.worker.num_kv_blocks(config.block_size)
        self.max_model_len = self.model_config.max_model_len = fit_max_model_len(
            config, self.model_config.max_model_len, num_blocks)
        if config.max_num_batched_tokens is None:
            config.max_num_batched_tokens = max(2048, config.max_num_seqs) if config.enable_chunked_prefill \
                else max(self.max_model_len, config.max_num_seqs)
        check_batch_budget(config, self.max_model_len)
        self.worker.allocate_kv_cache(num_blocks, config.block_size)
        self.kv = KVCacheManager(num_blocks, config.block_size, config.enable_prefix_caching)
        self.eos_token_id = self.tokenizer.eos_token_id
        self.structured_output = StructuredOutputManager(config.guided_decoding_backend, self.tokenizer,
                                                         self.model_config.vocab_size, self.eos_token_id)
        self.scheduler = Scheduler(self.kv, config.max_num_seqs, config.max_num_batched_tokens,
                                   config.enable_chunked_prefill, self.structured_output)
        self.outputs = OutputProcessor(self.tokenizer)
        self.isolator = FaultIsolator(self._run, self.scheduler.resend, self.kv.block_ids, self.outputs.parent_id)
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

    def _checked_prompt(self, prompt: Prompt) -> tuple[str | None, list[int]]:
        """Tokenized, with every id in the vocabulary and room left in the context: one token
        to generate, none to pool."""
        text, token_ids = self.tokenize(prompt)
        if not token_ids:
            raise InputError("the prompt is empty", "prompt")
        vocab = self.model_config.vocab_size
        if min(token_ids) < 0 or max(token_ids) >= vocab:
            raise InputError(f"token ids must be in [0, {vocab})", "prompt")
        pooling = self.config.runner == "pooling"
        if len(token_ids) > self.max_model_len - (0 if pooling else 1):
            room = "" if pooling else ", and at least one must be left to generate"
            raise InputError(f"the prompt has {len(token_ids)} tokens; this model's maximum context length is "
                             f"{self.max_model_len} tokens{room}", "prompt")
        return text, token_ids

    def make_request(self, request_id: str, prompt: Prompt, params: SamplingParams) -> ParentState:
        """Validate and tokenize (safe to call from any thread); `add` then enqueues it."""
        if self.config.runner == "pooling":
            raise InputError("this engine runs the pooling runner: it embeds prompts (LLM.embed), it does not "
                             "generate text")
        text, token_ids = self._checked_prompt(prompt)
        self._check_params(params)
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

    def make_pooling_request(self, request_id: str, prompt: Prompt, params: PoolingParams) -> PoolingState:
        """As `make_request`, for the pooling runner (embeddings)."""
        if self.config.runner != "pooling":
            raise InputError('embeddings need the pooling runner (--runner pooling, or LLM(runner="pooling"))')
        text, token_ids = self._checked_prompt(prompt)
        return PoolingState(request_id, text, token_ids, self._pooling_params(params))

    def _pooling_params(self, params: PoolingParams) -> PoolingParams:
        """`params` with the model's pooler config filled in; `dimensions` only where the model
        was trained for them (Matryoshka)."""
        config = self.config.pooler_config
        dims = params.dimensions
        if dims is not None:
            hidden = self.model_config.hf_config.hidden_size
            if not config.is_matryoshka:
                raise InputError(f"this model does not support Matryoshka `dimensions`: its embeddings have "
                                 f"{hidden} values", "dimensions")
            if config.matryoshka_dimensions and dims not in config.matryoshka_dimensions:
                raise InputError(f"dimensions must be one of {config.matryoshka_dimensions} for this model, "
                                 f"got {dims}", "dimensions")
            if not 1 <= dims <= hidden:
                raise InputError(f"dimensions must be in [1, {hidden}], got {dims}", "dimensions")
        return PoolingParams(dims, config.normalize if params.normalize is None else params.normalize)

    def _check_params(self, params: SamplingParams) -> None:
        """What SamplingParams cannot check alone (it does not know the model): every value
        that reaches the sampling tensors must be one they can hold."""
        vocab = self.model_config.vocab_size
        max_logprobs = min(self.config.max_logprobs, vocab)
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(params, name)
            if value is not None and value > max_logprobs:
                raise InputError(f"{name} must be at most {max_logprobs}, got {value}", name)
        if params.prompt_logprobs is not None and not self.backend.prompt_logprobs:
            raise InputError(f"prompt_logprobs: the {self.backend.name} backend does not compute logprobs of "
                             "prompt tokens", "prompt_logprobs")
        if params.top_k > vocab:
            raise InputError(f"top_k must be -1 (off) or in [1, {vocab}] (the vocabulary), got {params.top_k}",
                             "top_k")
        for name, ids in (("stop_token_ids", params.stop_token_ids), ("allowed_token_ids", params.allowed_token_ids),
                          ("logit_bias", params.logit_bias)):
            bad = next((t for t in ids or () if not 0 <= t < vocab), None)
            if bad is not None:
                raise InputError(f"{name} must hold token ids in [0, {vocab}), got {bad}", name)

    def _detokenizer(self, prompt_ids: list[int], params: SamplingParams) -> IncrementalDetokenizer:
        return IncrementalDetokenizer(
            self.tokenizer, prompt_ids, skip_special_tokens=params.skip_special_tokens,
            spaces_between_special_tokens=params.spaces_between_special_tokens, stop=params.stop,
            include_stop_str_in_output=params.include_stop_str_in_output, min_tokens=params.min_tokens,
            stream_holdback=params.output_kind == RequestOutputKind.DELTA)

    def add(self, parent: ParentState | PoolingState) -> None:
        if self.outputs.has(parent.request_id):
            raise InputError(f"request id {parent.request_id!r} is already running", "request_id")
        self.outputs.add(parent)
        if isinstance(parent, PoolingState):
            self.scheduler.add_request(Request(parent.request_id, parent.prompt_token_ids, _NO_SAMPLING, 0,
                                               self.eos_token_id, parent.arrival_time, pooling_params=parent.params))
            return
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

    def add_request(self, request_id: str, prompt: Prompt,
                    params: SamplingParams | PoolingParams | None = None) -> None:
        """A PoolingParams makes it a pooling request, as vLLM's."""
        if isinstance(params, PoolingParams):
            self.add(self.make_pooling_request(request_id, prompt, params))
        else:
            self.add(self.make_request(request_id, prompt, params or SamplingParams()))

    def abort_request(self, request_id: str) -> RequestOutput | PoolingRequestOutput | None:
        self.scheduler.finish_requests(self.outputs.child_ids(request_id), RequestStatus.FINISHED_ABORTED)
        return self.outputs.abort(request_id)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished()

    # ------------------------------------------------------------------ step

    def step(self) -> list[RequestOutput | PoolingRequestOutput]:
        """Raises only EngineDeadError (or a bug outside any one request): the engine is done."""
        batch = self.scheduler.schedule()
        failed = self._fail_grammars()
        if not batch.requests:
            self.structured_output.wait_for_compile(GRAMMAR_WAIT_S)  # idle until a grammar is ready
            return failed
        result, faults = self.isolator.run(batch)
        if faults is not None:
            failed += self._end_faulty(batch, faults)
        sampled = self.scheduler.update(batch, result)
        outputs, stopped, errors = self.outputs.process(sampled, result)
        self.scheduler.finish_requests(stopped, RequestStatus.FINISHED_STOPPED)
        failed += [out for rid, exc in errors.items() if (out := self._fail_request(rid, exc)) is not None]
        return failed + outputs

    def _run(self, batch: SchedulerOutput) -> ModelRunnerOutput:
        self.worker.execute_model(batch)
        grammar = self.scheduler.grammar_bitmask(batch)  # on the host while the device computes
        return self.worker.sample_tokens(grammar)

    def _end_faulty(self, batch: SchedulerOutput, faults: StepFaults) -> list[RequestOutput]:
        """Fail the requests that failed alone; send those that read their blocks back to the
        queue. Neither may leave the blocks this step was writing in the prefix cache."""
        for row in [*faults.failed, *faults.void]:
            request = self.scheduler.requests.get(batch.requests[row].request_id)
            if request is not None:
                self.kv.uncache_uncomputed(request)
        self.scheduler.preempt_requests(batch.requests[row].request_id for row in faults.void)
        return [out for row, exc in faults.failed.items()
                if (out := self._fail_request(batch.requests[row].request_id, exc)) is not None]

    def _fail_request(self, child_id: str, exc: Exception) -> RequestOutput | PoolingRequestOutput | None:
        """End the caller's request (every sequence of it) with finish reason "error"."""
        parent_id = self.outputs.parent_id(child_id)
        logger.error("request %s failed in the engine: %s: %s", parent_id or child_id, type(exc).__name__, exc,
                     exc_info=exc)
        if parent_id is None:
            self.scheduler.finish_requests([child_id], RequestStatus.FINISHED_ERROR)
            return None
        self.scheduler.finish_requests(self.outputs.child_ids(parent_id), RequestStatus.FINISHED_ERROR)
        return self.outputs.abort(parent_id, error="the engine failed while running this request")

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

    def worker_error(self) -> str | None:
        """Why the worker processes stopped (None: they run, or the worker is in-process)."""
        return self.worker.error if isinstance(self.worker, Executor) else None

    def shutdown(self) -> None:
        self.structured_output.shutdown()
        self.worker.shutdown()


def fit_max_model_len(config: EngineConfig, max_model_len: int, num_blocks: int) -> int:
    """A sequence of max_model_len tokens must fit the KV cache, or a request alone in the
    engine could outgrow it and wait forever. An explicit --max-model-len that does not fit is
    an error; the model's own limit is lowered to what fits, with a warning."""
    capacity = num_blocks * config.block_size
    if max_model_len <= capacity:
        return max_model_len
    numbers = (f"max_model_len is {max_model_len} tokens but the KV cache holds {capacity} "
               f"({num_blocks} blocks of {config.block_size} tokens)")
    if config.max_model_len is not None or capacity < 2:
        raise ConfigError(f"{numbers}: one full-length sequence does not fit. Give the cache more memory "
                          "(--kv-cache-memory, --num-kv-blocks) or lower --max-model-len.")
    logger.warning("%s: lowering max_model_len to %d (give the cache more memory to serve longer contexts)",
                   numbers, capacity)
    return capacity


def check_batch_budget(config: EngineConfig, max_model_len: int) -> None:
    """Without chunked prefill a prompt runs in one step, so the step budget must hold the
    longest one (vLLM refuses the same)."""
    if not config.enable_chunked_prefill and config.max_num_batched_tokens < max_model_len:
        raise ConfigError(f"max_num_batched_tokens ({config.max_num_batched_tokens}) is smaller than "
                          f"max_model_len ({max_model_len}) and chunked prefill is off: longer prompts could "
                          "never be scheduled. Raise max_num_batched_tokens, lower max_model_len or enable "
                          "chunked prefill.")


def settle_pooling(config: EngineConfig) -> None:
    """The pooler config from the model's files unless given. Mean pooling averages a whole
    prompt in one step: no chunked prefill, no prefix-cache hits."""
    if config.pooler_config is None:
        config.pooler_config = load_pooler_config(resolve_model_path(config.model))
    pooler = config.pooler_config
    if pooler.pooling_type == "MEAN" and (config.enable_chunked_prefill or config.enable_prefix_caching):
        logger.info("mean pooling runs each prompt whole in one step: chunked prefill and prefix caching are off")
        config.enable_chunked_prefill = config.enable_prefix_caching = False
    logger.info("pooling runner: %s pooling, %snormalized", pooler.pooling_type, "" if pooler.normalize else "not ")


def check_config(config: EngineConfig) -> None:
    """Reject contradictory settings before anything loads."""
    if config.max_num_seqs < 1:
        raise ConfigError(f"max_num_seqs must be at least 1, got {config.max_num_seqs}")
    if config.max_num_batched_tokens is not None and config.max_num_batched_tokens < 1:
        raise ConfigError(f"max_num_batched_tokens must be positive, got {config.max_num_batched_tokens}")
    if config.max_model_len is not None and config.max_model_len < 2:
        raise ConfigError(f"max_model_len must be at least 2, got {config.max_model_len}")
    if config.runner not in RUNNERS:
        raise ConfigError(f"runner must be one of {', '.join(RUNNERS)}, got {config.runner!r}")
    if config.guided_decoding_backend not in BACKENDS:
        raise ConfigError(f"guided_decoding_backend must be one of {', '.join(BACKENDS)}, "
                          f"got {config.guided_decoding_backend!r}")

