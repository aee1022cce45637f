"""The OpenVINO worker: each step is one inference request of the paged model.

The KV cache is the CPU plugin's paged cache (one key and one value tensor per layer, laid
out and quantized as the plugin chooses), addressed by Octavo's block ids. `execute_model`
builds the step's inputs from the scheduler's block tables and starts the request
asynchronously; `sample_tokens` waits for it while the engine has filled the grammar masks,
and hands the logits of the sampling positions to the core's `StepSampler`.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import openvino as ov
import torch

from octavo.backend import (ConfigError, EngineConfig, GrammarBitmask, ModelConfig, ModelRunnerOutput, RequestState,
                            RequestStates, SchedulerOutput, StepSampler, Worker, num_blocks_for_memory,
                            prompt_logprobs)
from octavo_openvino.graph import KEY_CACHE, LOGITS, VALUE_CACHE

logger = logging.getLogger(__name__)

DEFAULT_KV_CACHE_MEMORY = 4 << 30  # bytes, as the CPU backend


@dataclass(slots=True)
class StepFeed:
    """One step's inputs (numpy, in the graph's input names) and where its logits go."""

    arrays: dict[str, np.ndarray]
    sample_rows: list[int]  # scheduled requests that sample, in logits-row order
    prompt_rows: dict[int, tuple[int, int]]  # request -> (first logits row, count) of prompt logprobs


def build_feed(batch: SchedulerOutput, reqs: list[RequestState]) -> StepFeed:
    """Flatten the step as the paged-attention inputs want it: O(requests) Python,
    O(tokens) numpy. Logits rows: each sampling request's last token, then the rows of the
    requests that asked for prompt logprobs."""
    bs = batch.block_size
    num_new = np.fromiter((r.num_new_tokens for r in batch.requests), np.int64, len(reqs))
    computed = np.fromiter((r.num_computed_tokens for r in reqs), np.int64, len(reqs))
    begins = np.zeros(len(reqs) + 1, np.int64)
    np.cumsum(num_new, out=begins[1:])
    req_index = np.repeat(np.arange(len(reqs)), num_new)
    positions = np.arange(begins[-1]) - begins[:-1][req_index] + computed[req_index]
    seq_lens = computed + num_new
    num_blocks = -(-seq_lens // bs)
    block_begins = np.zeros(len(reqs) + 1, np.int64)
    np.cumsum(num_blocks, out=block_begins[1:])
    input_ids = np.empty(begins[-1], np.int64)
    block_indices = np.empty(block_begins[-1], np.int32)
    for i, r in enumerate(reqs):
        input_ids[begins[i]:begins[i + 1]] = r.token_ids[r.num_computed_tokens:int(seq_lens[i])]
        block_indices[block_begins[i]:block_begins[i + 1]] = r.block_ids[:int(num_blocks[i])]
    sample_rows = [i for i, r in enumerate(batch.requests) if r.samples]
    rows = [begins[1:][sample_rows] - 1]
    prompt_rows, next_row = {}, len(sample_rows)
    for i, r in enumerate(reqs):
        count = min(int(seq_lens[i]), r.num_prompt_tokens - 1) - r.num_computed_tokens
        if r.sampling_params.prompt_logprobs is not None and count > 0:
            prompt_rows[i] = (next_row, count)
            rows.append(np.arange(begins[i], begins[i] + count))
            next_row += count
    arrays = {
        "input_ids": input_ids,
        "positions": positions,
        "past_lens": computed.astype(np.int32),
        "subsequence_begins": begins.astype(np.int32),
        "block_indices": block_indices,
        "block_indices_begins": block_begins.astype(np.int32),
        "max_context_len": np.array(seq_lens.max(), np.int32),
        "sample_indices": np.concatenate(rows).astype(np.int64),
    }
    return StepFeed(arrays, sample_rows, prompt_rows)


@dataclass(slots=True)
class _Step:
    batch: SchedulerOutput
    reqs: list[RequestState]
    feed: StepFeed


class OpenVINOWorker(Worker):
    def __init__(self, config: EngineConfig, backend):
        self.config = config
        self.backend = backend
        self.options = backend.options
        self.compiled: ov.CompiledModel | None = None
        self.request: ov.InferRequest | None = None
        self.model_config: ModelConfig | None = None
        self.cache_inputs: list[ov.Output] = []
        self.states = RequestStates()
        self.sampler = StepSampler(backend.sampler_ops(), torch.device("cpu"))
        self.converted = False  # whether this start converted the checkpoint (else: disk cache)
        self.load_seconds = 0.0
        self._step: _Step | None = None

    # ------------------------------------------------------------------ start-up

    def load_model(self) -> ModelConfig:
        from octavo_openvino.convert import load_compiled

        # OpenVINO's threads do the compute; torch only samples. Its OpenMP threads would spin
        # after each sample and take the cores from the next inference (seen: +50% CPU per token).
        torch.set_num_threads(1)
        start = time.perf_counter()
        self.model_config, self.compiled, self.converted = load_compiled(self.config, self.options)
        self.cache_inputs = [i for i in self.compiled.inputs
                             if i.get_any_name().startswith(("key_cache.", "value_cache."))]
        self.load_seconds = time.perf_counter() - start
        return self.model_config

    def block_size(self) -> int:
        """The plugin's block size (it lays out the cache; the engine must agree)."""
        return self.compiled.input(VALUE_CACHE.format(0)).get_partial_shape()[2].get_length()

    def _block_shapes(self) -> list[tuple[ov.Type, list[int]]]:
        return [(i.get_element_type(), [d.get_length() for d in list(i.get_partial_shape())[1:]])
                for i in self.cache_inputs]

    def kv_bytes_per_block(self) -> int:
        return sum(t.size * int(np.prod(shape)) for t, shape in self._block_shapes())

    def num_kv_blocks(self, block_size: int) -> int:
        if block_size != self.block_size():
            raise ConfigError(f"OpenVINO's CPU plugin uses KV blocks of {self.block_size()} tokens, "
                              f"the engine asked for {block_size}")
        return num_blocks_for_memory(self.config, self.model_config.max_model_len, block_size,
                                     self.kv_bytes_per_block(), DEFAULT_KV_CACHE_MEMORY)

    def allocate_kv_cache(self, num_blocks: int, block_size: int) -> None:
        self.request = self.compiled.create_infer_request()
        for inp, (dtype, shape) in zip(self.cache_inputs, self._block_shapes()):
            tensor = ov.Tensor(dtype, [num_blocks, *shape])
            np.asarray(tensor.data).view(np.uint8)[...] = 0  # no stale NaN in unwritten slots
            self.request.set_tensor(inp, tensor)

    def warm_up(self) -> None:
        """One step of one token into block 0, so the first request does not pay for the
        plugin's first-inference set-up."""
        zeros = lambda n, dtype: np.zeros(n, dtype)  # noqa: E731
        arrays = {"input_ids": zeros(1, np.int64), "positions": zeros(1, np.int64), "past_lens": zeros(1, np.int32),
                  "subsequence_begins": np.array([0, 1], np.int32), "block_indices": zeros(1, np.int32),
                  "block_indices_begins": np.array([0, 1], np.int32), "max_context_len": np.array(1, np.int32),
                  "sample_indices": zeros(1, np.int64)}
        self._start(arrays)
        self.request.wait()

    # ------------------------------------------------------------------ steps

    def _start(self, arrays: dict[str, np.ndarray]) -> None:
        for name, array in arrays.items():
            self.request.set_tensor(name, ov.Tensor(array, shared_memory=True))
        self.request.start_async()

    def execute_model(self, batch: SchedulerOutput) -> None:
        reqs = self.states.update(batch)
        self._step = None
        if batch.requests:
            feed = build_feed(batch, reqs)
            self._start(feed.arrays)  # the arrays stay referenced by _step until the wait
            self._step = _Step(batch, reqs, feed)

    def sample_tokens(self, grammar: GrammarBitmask | None) -> ModelRunnerOutput:
        step, self._step = self._step, None
        if step is None:
            return ModelRunnerOutput([])
        self.request.wait()
        # The request's own output buffer: used up before the next step starts.
        logits = torch.from_numpy(self.request.get_tensor(LOGITS).data)
        out = ModelRunnerOutput([-1] * len(step.reqs))
        for i, (first, count) in step.feed.prompt_rows.items():
            r = step.reqs[i]
            targets = r.token_ids[r.num_computed_tokens + 1:r.num_computed_tokens + 1 + count]
            out.prompt_logprobs[r.request_id] = prompt_logprobs(logits[first:first + count], targets,
                                                                r.sampling_params.prompt_logprobs)
        rows = step.feed.sample_rows
        if rows:
            self.sampler.sample([step.reqs[i] for i in rows], rows, logits[:len(rows)], grammar, out)
        return out

    def shutdown(self) -> None:
        self.request = None
        self.compiled = None
