"""The worker's copy of the requests the scheduler runs, kept current from each step.

The scheduler sends a request whole once (`NewRequestData`), then only what changed
(`ScheduledRequest`: new tokens, new blocks); `RequestStates.update` applies a step and
returns the step's requests in order. A preempted request comes back whole; its seeded
generator is kept, so its samples continue the same sequence.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from octavo.backend import SchedulerOutput
from octavo.sampling_params import SamplingParams


@dataclass(slots=True, eq=False)
class RequestState:
    request_id: str
    token_ids: list[int]  # prompt + output, as far as the scheduler has sent them
    num_prompt_tokens: int
    sampling_params: SamplingParams
    eos_token_id: int | None
    block_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    generator: torch.Generator | None = None  # seeded sampling: made by the sampler on first use

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]


class RequestStates:
    def __init__(self) -> None:
        self.requests: dict[str, RequestState] = {}

    def update(self, batch: SchedulerOutput) -> list[RequestState]:
        """Apply the step's changes; returns its requests in step order."""
        for rid in batch.finished_request_ids:
            self.requests.pop(rid, None)
        for new in batch.new_requests:
            old = self.requests.get(new.request_id)
            self.requests[new.request_id] = RequestState(
                new.request_id, new.prompt_token_ids + new.output_token_ids, len(new.prompt_token_ids),
                new.sampling_params, new.eos_token_id, generator=old.generator if old else None)
        step = []
        for scheduled in batch.requests:
            state = self.requests[scheduled.request_id]
            state.token_ids += scheduled.new_token_ids
            state.block_ids += scheduled.new_block_ids
            state.num_computed_tokens = scheduled.num_computed_tokens
            step.append(state)
        return step
