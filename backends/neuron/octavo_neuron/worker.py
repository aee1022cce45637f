"""`NeuronWorker`: steps run by NxD Inference's compiled model instead of the core's torch modules.

- `load_model` reads the HF config, picks NxDI's class for it and fixes the buckets
  (`buckets.BucketPlan`); `max_model_len` becomes the largest bucket, so the engine rejects
  a longer prompt at admission.
- The KV cache lives inside the compiled model (NxDI's block KV layout, `pa_num_blocks` x
  `pa_block_size`), so `allocate_kv_cache` only records its size and `warm_up` compiles
  (or loads from `--compiled-model-cache`) and loads the model, with NxDI's own warm-up.
- `execute_model` runs each prefill through context encoding (NxDI compiles it for one
  sequence at a time) and all decodes of the step through one token-generation call, with
  the engine's block tables and slot mappings: prefix-cache hits come in as a cached prefix.
  NxDI (SDK 2.28+) has no chunked prefill, so the backend turns it off in the engine.
- `sample_tokens` takes the device's token where the request allows on-device sampling
  (`sampling.device_can_sample`) and otherwise gives the logits to the core's `StepSampler`
  (seeds, penalties, logprobs, grammars).
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import torch

from octavo.backend import (Backend, ConfigError, EngineConfig, GrammarBitmask, ModelConfig, ModelRunnerOutput,
                            RequestState, RequestStates, SchedulerOutput, StepSampler, Worker, load_hf_config,
                            resolve_model_path)
from octavo_neuron import inputs, nxdi
from octavo_neuron.buckets import BucketPlan
from octavo_neuron.sampling import GLOBAL_TOPK, device_can_sample, device_row

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Step:
    """What `execute_model` leaves for `sample_tokens`: per step row, the device's token and
    the logits (rows that do not sample hold zeros)."""

    batch: SchedulerOutput
    reqs: list[RequestState]
    tokens: torch.Tensor | None  # [rows] int
    logits: torch.Tensor | None  # [rows, V] fp32


class NeuronWorker(Worker):
    def __init__(self, config: EngineConfig, backend: Backend) -> None:
        self.config = config
        self.options = backend.options
        self.sampler = StepSampler(backend.sampler_ops(), torch.device("cpu"))  # NxDI returns host tensors
        self.states = RequestStates()
        self.model = None
        self.bucket_steps: Counter[tuple] = Counter()  # which compiled graphs ran, for tuning the buckets
        self._step: _Step | None = None

    # ------------------------------------------------------------ set-up

    def load_model(self) -> ModelConfig:
        path = resolve_model_path(self.config.model)
        if path.endswith(".gguf"):
            raise ConfigError("neuron compiles Hugging Face checkpoints (config.json + safetensors), not GGUF files")
        hf = load_hf_config(path)
        self.model_path, self.model_cls = path, nxdi.model_class(hf.model_type)
        limit = self.config.max_model_len or hf.max_position_embeddings
        if limit > hf.max_position_embeddings:
            raise ConfigError(f"max_model_len {limit} exceeds the model's max_position_embeddings "
                              f"{hf.max_position_embeddings}")
        o = self.options
        self.plan = BucketPlan.build(limit, self.config.block_size, o.context_encoding_buckets, o.prefix_buckets,
                                     o.token_generation_buckets)
        self.model_config = ModelConfig(
            architecture=hf.architectures[0], hf_config=hf, dtype=self.config.dtype,
            max_model_len=self.plan.max_model_len, vocab_size=hf.vocab_size, num_layers=hf.num_hidden_layers,
            num_heads=hf.num_attention_heads, num_kv_heads=hf.num_key_value_heads,
            head_dim=getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads)
        return self.model_config

    def num_kv_blocks(self, block_size: int) -> int:
        """From --kv-cache-memory, else room for every sequence at full length (NxDI sizes
        the cache at compile time, so there is nothing to profile)."""
        if self.config.kv_cache_memory:
            return self.config.kv_cache_memory // self.model_config.kv_bytes_per_block(block_size, self.config.dtype)
        return self.config.max_num_seqs * (self.plan.max_model_len // block_size)

    def allocate_kv_cache(self, num_blocks: int, block_size: int) -> None:
        self.num_blocks, self.block_size = num_blocks, block_size  # allocated by NxDI inside the model

    def neuron_config(self) -> dict:
        """NxDI's NeuronConfig for this engine: continuous batching over the block KV layout
        with prefix caching, the buckets of `plan`, on-device sampling if enabled."""
        o, plan, seqs = self.options, self.plan, self.config.max_num_seqs
        return dict(
            tp_degree=o.tp_degree, batch_size=seqs, ctx_batch_size=1, tkg_batch_size=seqs,
            seq_len=plan.max_model_len, max_context_length=plan.max_model_len,
            torch_dtype=str(self.config.dtype).removeprefix("torch."), padding_side="right",
            enable_bucketing=True, context_encoding_buckets=list(plan.context), prefix_buckets=list(plan.prefix),
            token_generation_buckets=list(plan.token), is_continuous_batching=True,
            on_device_sampling_config=dict(dynamic=True, deterministic=False, global_topk=GLOBAL_TOPK)
            if o.on_device_sampling else None,
            output_logits=o.on_device_sampling,  # requests the device cannot sample need the logits too
            is_block_kv_layout=True, is_prefix_caching=True, pa_num_blocks=self.num_blocks,
            pa_block_size=self.block_size)

    def warm_up(self) -> None:
        config = nxdi.inference_config(self.model_cls, self.model_path, **self.neuron_config())
        self.model = nxdi.compile_or_load(self.model_cls, self.model_path, config, self.options.compiled_model_cache)

    # ------------------------------------------------------------ steps

    def execute_model(self, batch: SchedulerOutput) -> None:
        reqs = self.states.update(batch)
        tokens = logits = None
        prefills = [i for i, s in enumerate(batch.requests) if s.num_new_tokens > 1]
        decodes = [i for i, s in enumerate(batch.requests) if s.num_new_tokens == 1]
        calls = [([i], inputs.context_encoding(reqs[i], batch.requests[i].num_new_tokens, self.block_size))
                 for i in prefills]
        if decodes:
            calls.append((decodes, inputs.token_generation([reqs[i] for i in decodes], self.block_size)))
        for rows, step_inputs in calls:
            self._count_bucket(rows, reqs, batch)
            out = nxdi.forward(self.model, step_inputs, [device_row(reqs[i].sampling_params) for i in rows])
            if out.tokens is not None:
                tokens = torch.zeros(len(reqs), dtype=torch.long) if tokens is None else tokens
                tokens[rows] = out.tokens.long()
            if out.logits is not None:
                logits = torch.zeros(len(reqs), out.logits.shape[-1]) if logits is None else logits
                logits[rows] = out.logits.float()
        self._step = _Step(batch, reqs, tokens, logits)

    def sample_tokens(self, grammar: GrammarBitmask | None) -> ModelRunnerOutput:
        step, self._step = self._step, None
        out = ModelRunnerOutput(sampled_token_ids=[-1] * len(step.reqs))
        guided = set(grammar.rows) if grammar is not None else set()
        host = []
        for row, (scheduled, req) in enumerate(zip(step.batch.requests, step.reqs)):
            if not scheduled.samples:
                continue
            if (step.tokens is not None and row not in guided
                    and device_can_sample(req.sampling_params, len(req.output_token_ids))):
                out.sampled_token_ids[row] = int(step.tokens[row])
            else:
                host.append(row)
        if host:
            self.sampler.sample([step.reqs[i] for i in host], host, step.logits[host], grammar, out)
        return out

    def _count_bucket(self, rows: list[int], reqs: list[RequestState], batch: SchedulerOutput) -> None:
        first = batch.requests[rows[0]]
        if first.num_new_tokens > 1:
            key = ("context_encoding", *self.plan.context_bucket(first.num_new_tokens, first.num_computed_tokens))
        else:
            key = ("token_generation", self.plan.token_bucket(max(reqs[i].num_computed_tokens for i in rows)))
        self.bucket_steps[key] += 1

    def shutdown(self) -> None:
        if self.bucket_steps:
            logger.info("neuron steps per compiled bucket: %s", dict(self.bucket_steps))
        self.model = None
