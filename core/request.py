"""A request as the scheduler sees it: tokens so far and how many of them are in the KV cache."""
from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from octavo.pooling_params import PoolingParams
from octavo.sampling_params import SamplingParams
from octavo.structured_output import GrammarState


class RequestStatus(enum.IntEnum):
    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2
    FINISHED_STOPPED = 3
    FINISHED_LENGTH = 4
    FINISHED_ABORTED = 5
    FINISHED_ERROR = 6  # the engine failed on this request (see LLMEngine.step)

    @property
    def finished(self) -> bool:
        return self >= RequestStatus.FINISHED_STOPPED

    @property
    def finish_reason(self) -> str | None:
        return {RequestStatus.FINISHED_STOPPED: "stop", RequestStatus.FINISHED_LENGTH: "length",
                RequestStatus.FINISHED_ABORTED: "abort", RequestStatus.FINISHED_ERROR: "error"}.get(self)


@dataclass(slots=True, eq=False)
class Request:
    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams  # a pooling request's are defaults, never used: it samples nothing
    max_tokens: int  # resolved against the context length
    eos_token_id: int | None = None
    arrival_time: float = field(default_factory=time.monotonic)
    token_ids: list[int] = field(init=False)  # prompt + output
    num_computed_tokens: int = 0
    num_cached_tokens: int = -1  # prefix-cache hit on first scheduling; -1 until then
    num_preemptions: int = 0
    status: RequestStatus = RequestStatus.WAITING
    stop_reason: int | str | None = None  # the stop token id or stop string that ended it
    first_scheduled_time: float | None = None
    grammar: GrammarState | None = None  # guided decoding: scheduled once compiled
    num_sent_tokens: int = 0  # tokens the worker has (0: it has not seen the request)
    num_sent_blocks: int = 0  # likewise, KV blocks
    pooling_params: PoolingParams | None = None  # a pooling request: it ends with its prompt

    def __post_init__(self) -> None:
        self.token_ids = list(self.prompt_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - len(self.prompt_token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[len(self.prompt_token_ids):]

    def append_token(self, token_id: int) -> None:
        self.token_ids.append(token_id)

    def check_stop(self, token_id: int) -> bool:
        """Stop conditions decided by token ids alone; stop strings are the detokenizer's."""
        params = self.sampling_params
        num_out = self.num_output_tokens
        if num_out >= params.min_tokens:
            if token_id == self.eos_token_id and not params.ignore_eos:
                self.status = RequestStatus.FINISHED_STOPPED
                return True
            if token_id in params.stop_token_ids:
                self.status = RequestStatus.FINISHED_STOPPED
                self.stop_reason = token_id
                return True
        if num_out >= self.max_tokens:
            self.status = RequestStatus.FINISHED_LENGTH
            return True
        return False
