"""The TPU's `StepSampler`: sampling and prompt logprobs on the XLA device at static shapes,
so that after warm-up no step compiles.

A step's forward pass is its own graph, launched by `XlaGraphs.run`. Then:

- the hidden states at the step's padded logits indices (`max_num_reqs` rows) are gathered
  and launched: one graph per token bucket, so that what follows depends on the request
  bucket only;
- the logits of the first `bucket` rows and the sampler are one graph per request bucket
  and sampler variant; reading the sampled ids back is the step's only wait (logprobs are
  read only when a request asks for them);
- prompt logprobs, when a request asks, cover the whole padded step: one graph per token
  bucket.
"""
from __future__ import annotations

from functools import partial

import torch
import torch_xla

from octavo.backend import (DummyStepFn, GrammarBitmask, LogitsFn, ModelRunnerOutput, PromptChunk, RequestState,
                            SamplerOps, StepSampler, StepShape, TokenLogprobs, WarmUpTask, grammar_masks,
                            record_logprobs)
from octavo_tpu.buckets import bucket_for
from octavo_tpu.graphs import XlaPlan
from octavo_tpu.sampler import VARIANTS, SampledTensors, SamplingTensors, build_sampling, dummy_sampling, \
    gather_logprobs, sample


class XlaSampler(StepSampler):
    """The core's `StepSampler` hooks at the plan's buckets (the core's eager sampler would
    compile a graph per step's row count)."""

    def __init__(self, plan: XlaPlan, device: torch.device):
        super().__init__(SamplerOps(), device)
        self.plan = plan

    # ------------------------------------------------------------------ the step

    def sample_hidden(self, reqs: list[RequestState], rows: list[int], hidden: torch.Tensor,
                      logits_indices: torch.Tensor, compute_logits: LogitsFn, grammar: GrammarBitmask | None,
                      out: ModelRunnerOutput) -> None:
        num_rows = bucket_for(self.plan.req_buckets, len(rows))
        variant, tensors = build_sampling(reqs, num_rows, self.plan.vocab_size, grammar_masks(grammar, rows))
        sampled = self._sample(self._gather(hidden, logits_indices), num_rows, variant, tensors, compute_logits)
        for row, token in zip(rows, sampled.token_ids.cpu().tolist()):
            out.sampled_token_ids[row] = token
        if any(r.sampling_params.logprobs is not None for r in reqs):  # else never read back
            record_logprobs(reqs, sampled.logprob_token_ids.cpu(), sampled.logprobs.cpu(), sampled.ranks.cpu(), out)

    def prompt_logprobs(self, chunks: list[PromptChunk], hidden: torch.Tensor, compute_logits: LogitsFn,
                        out: ModelRunnerOutput) -> None:
        """Prompt logprobs of the whole padded step in one graph, sliced per request on the host."""
        targets = torch.zeros(hidden.shape[0], dtype=torch.int64)
        for c in chunks:
            targets[c.first:c.first + len(c.targets)] = torch.tensor(c.targets)
        ids, values, ranks = (t.cpu() for t in self._prompt_graph(hidden, targets, compute_logits))
        for c in chunks:
            rows, k = slice(c.first, c.first + len(c.targets)), c.k
            out.prompt_logprobs[c.request_id] = TokenLogprobs(ids[rows, :k + 1].tolist(),
                                                              values[rows, :k + 1].tolist(), ranks[rows].tolist())

    def _gather(self, hidden: torch.Tensor, logits_indices: torch.Tensor) -> torch.Tensor:
        """The `max_num_reqs` rows at the padded logits indices, launched without waiting."""
        rows = hidden.index_select(0, logits_indices.to(self.device))
        torch_xla.sync(wait=False)
        return rows

    def _sample(self, rows: torch.Tensor, num_rows: int, variant: str, tensors: SamplingTensors,
                compute_logits: LogitsFn) -> SampledTensors:
        logits = compute_logits(rows[:num_rows])
        sampled = sample(logits, tensors.to(self.device), variant, self.plan.num_logprobs)
        torch_xla.sync()
        return sampled

    def _prompt_graph(self, hidden: torch.Tensor, targets: torch.Tensor,
                      compute_logits: LogitsFn) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logprobs = compute_logits(hidden).log_softmax(dim=-1)
        result = gather_logprobs(logprobs, targets.to(self.device), self.plan.num_logprobs)
        torch_xla.sync()
        return result

    # ------------------------------------------------------------------ warm-up

    def warm_up(self, shapes: list[StepShape], step_for: DummyStepFn, compute_logits: LogitsFn) -> list[WarmUpTask]:
        """Every graph of the plan but the forward passes, traced as serving traces them: per
        token bucket the gather and prompt logprobs (on the dummy step run at that shape), then
        per request bucket each sampler variant (on the last gather's rows: they are
        `max_num_reqs` whatever the token bucket, so one gather serves every sampler graph)."""
        gathered: dict[str, torch.Tensor] = {}

        def gather(shape: StepShape) -> None:
            gathered["rows"] = self._gather(*step_for(shape))

        def prompt(shape: StepShape) -> None:
            hidden, _ = step_for(shape)
            self._prompt_graph(hidden, torch.zeros(shape.num_tokens, dtype=torch.int64), compute_logits)

        def sampler(num_rows: int, variant: str) -> None:
            tensors = dummy_sampling(variant, num_rows, self.plan.vocab_size)
            self._sample(gathered["rows"], num_rows, variant, tensors, compute_logits)

        tasks: list[WarmUpTask] = []
        for shape in shapes:
            tasks += [(f"sampling rows, {shape.num_tokens} tokens", partial(gather, shape)),
                      (f"prompt logprobs, {shape.num_tokens} tokens", partial(prompt, shape))]
        return tasks + [(f"sampler ({variant}), {num_rows} rows", partial(sampler, num_rows, variant))
                        for num_rows in self.plan.req_buckets for variant in VARIANTS]
