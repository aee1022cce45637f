"""The core's model runner at static shapes: every step, sample and prompt-logprob pass
runs at a bucket's shape, so after warm-up XLA never compiles again.

A step is two graphs. `execute_model` traces the padded forward pass (KV writes included)
and the gather of the hidden states of the rows that sample, always `max_num_reqs` of them,
and launches it without waiting; the host fills the grammar masks meanwhile.
`sample_tokens` traces the logits of the first `bucket` gathered rows and the sampler, and
waits for the sampled ids: the step's only read from the device (logprobs are read only
when a request asks for them).
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
import torch_xla

from octavo.backend import (GrammarBitmask, ModelRunner, ModelRunnerOutput, StepInputs, TokenLogprobs, dummy_inputs,
                            pad_inputs)
from octavo_tpu.buckets import bucket_for
from octavo_tpu.graphs import XlaGraphs
from octavo_tpu.sampler import VARIANTS, build_sampling, dummy_sampling, gather_logprobs, sample


class XlaModelRunner(ModelRunner):
    graphs: XlaGraphs
    grad_mode = torch.no_grad  # lazy tensors cannot be inference tensors

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.plan = self.graphs.plan
        self._sample_hidden: torch.Tensor | None = None  # [max_num_reqs, hidden] rows that sample

    # ------------------------------------------------------------------ the step

    def forward(self, inputs: StepInputs) -> torch.Tensor:
        """Hidden states of the padded step (padding rows included: slicing them off would
        put the step's length into the graph)."""
        shape = self.graphs.shape_for(inputs.layout)
        padded = pad_inputs(inputs, shape, self.graphs.pad_slot, self.graphs.block_table_width)
        return self._launch(shape, padded)

    def _sample(self, step, grammar: GrammarBitmask | None, out: ModelRunnerOutput) -> None:
        self._prompt_logprobs(step, out)
        rows = step.inputs.sample_rows
        if not rows:
            return
        reqs = [step.reqs[i] for i in rows]
        masks = None
        if grammar is not None:
            position = {row: i for i, row in enumerate(rows)}
            masks = grammar.bitmask, [position[row] for row in grammar.rows]
        num_rows = bucket_for(self.plan.req_buckets, len(rows))
        sampled = self._run_sampler(num_rows, *build_sampling(reqs, num_rows, self.plan.vocab_size, masks))
        for row, token in zip(rows, sampled.token_ids.cpu().tolist()):
            out.sampled_token_ids[row] = token
        if any(r.sampling_params.logprobs is not None for r in reqs):
            ids, values, ranks = (sampled.logprob_token_ids.cpu().tolist(), sampled.logprobs.cpu().tolist(),
                                  sampled.ranks.cpu().tolist())
            for i, r in enumerate(reqs):
                k = r.sampling_params.logprobs
                if k is not None:
                    out.logprobs[r.request_id] = TokenLogprobs([ids[i][:k + 1]], [values[i][:k + 1]], [ranks[i]])

    def _launch(self, shape, padded: StepInputs) -> torch.Tensor:
        """Trace the forward pass and the gather of the sampling rows; start running it."""
        hidden = self.graphs.run(shape, *self._to_device(padded))
        rows = torch.zeros(self.plan.max_num_reqs, dtype=torch.int64)
        rows[:len(padded.logits_indices)] = padded.logits_indices
        self._sample_hidden = hidden.index_select(0, rows.to(self.device))
        torch_xla.sync(wait=False)
        return hidden

    def _run_sampler(self, num_rows: int, variant: str, tensors):
        logits = self.model.compute_logits(self._sample_hidden[:num_rows])
        sampled = sample(logits, tensors.to(self.device), variant, self.plan.num_logprobs)
        torch_xla.sync()
        return sampled

    def _prompt_logprobs(self, step, out: ModelRunnerOutput) -> None:
        """Prompt logprobs of the whole padded step in one graph (per token bucket), sliced
        per request on the host."""
        wanted = []  # (request, first row in the step, number of prompt positions)
        starts = step.inputs.layout.query_start_loc.tolist()
        for i, (scheduled, r) in enumerate(zip(step.batch.requests, step.reqs)):
            count = min(r.num_computed_tokens + scheduled.num_new_tokens, r.num_prompt_tokens - 1) \
                - r.num_computed_tokens
            if r.sampling_params.prompt_logprobs is not None and count > 0:
                wanted.append((r, starts[i], count))
        if not wanted:
            return
        targets = torch.zeros(step.hidden.shape[0], dtype=torch.int64)
        for r, first, count in wanted:
            start = r.num_computed_tokens + 1
            targets[first:first + count] = torch.tensor(r.token_ids[start:start + count])
        ids, values, ranks = (t.cpu() for t in self._prompt_graph(step.hidden, targets))
        for r, first, count in wanted:
            k = r.sampling_params.prompt_logprobs
            rows = slice(first, first + count)
            out.prompt_logprobs[r.request_id] = TokenLogprobs(ids[rows, :k + 1].tolist(),
                                                              values[rows, :k + 1].tolist(), ranks[rows].tolist())

    def _prompt_graph(self, hidden: torch.Tensor, targets: torch.Tensor):
        logprobs = self.model.compute_logits(hidden).log_softmax(dim=-1)
        result = gather_logprobs(logprobs, targets.to(self.device), self.plan.num_logprobs)
        torch_xla.sync()
        return result

    # ------------------------------------------------------------------ warm-up

    def warm_up_steps(self, block_size: int) -> Iterator[str]:
        """Compile every graph of the plan, yielding a label as each is done (the worker
        shows progress). The graphs are traced exactly as serving traces them."""
        with self.grad_mode():
            for shape in self.graphs.shapes():
                inputs = dummy_inputs(shape, block_size, self.graphs.pad_slot, self.graphs.block_table_width)
                self.graphs.capture(shape, self._forward, *self._to_device(inputs))
                hidden = self._launch(shape, inputs)
                torch_xla.sync(wait=True)
                yield f"forward, {shape.num_tokens} tokens"
                self._prompt_graph(hidden, torch.zeros(shape.num_tokens, dtype=torch.int64))
                yield f"prompt logprobs, {shape.num_tokens} tokens"
            for num_rows in self.plan.req_buckets:
                for variant in VARIANTS:
                    self._run_sampler(num_rows, variant, dummy_sampling(variant, num_rows, self.plan.vocab_size))
                    yield f"sampler ({variant}), {num_rows} rows"
