"""Per-request sampling settings, with the names and meaning vLLM and the OpenAI API use."""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from octavo.structured_output import StructuredOutputParams

_GREEDY_EPS = 1e-5
SEED_RANGE = (-(2**63), 2**63 - 1)  # what a torch.Generator takes, with room for n > 1 (seed + index)


class RequestOutputKind(enum.Enum):
    CUMULATIVE = 0  # every output holds all text and tokens so far (offline LLM)
    DELTA = 1  # every output holds only what is new (streaming)
    FINAL_ONLY = 2  # one output when the request finishes


@dataclass(slots=True)
class SamplingParams:
    n: int = 1
    best_of: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: off
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    max_tokens: int | None = 16  # None: up to the context length
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    logit_bias: dict[int, float] | None = None
    allowed_token_ids: list[int] | None = None
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE
    structured_outputs: StructuredOutputParams | None = None  # guided decoding

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if self.top_k == -1:
            self.top_k = 0
        self.validate()

    def validate(self) -> None:
        _check(self.n >= 1, "n", f"must be at least 1, got {self.n}")
        if self.best_of is not None:
            _check(self.best_of >= self.n, "best_of", f"must be >= n ({self.n}), got {self.best_of}")
        _check(math.isfinite(self.temperature) and self.temperature >= 0.0, "temperature",
               f"must be finite and non-negative, got {self.temperature}")
        _check(0.0 < self.top_p <= 1.0, "top_p", f"must be in (0, 1], got {self.top_p}")
        _check(self.top_k >= 0, "top_k", f"must be -1 (off), 0 (off) or positive, got {self.top_k}")
        _check(0.0 <= self.min_p <= 1.0, "min_p", f"must be in [0, 1], got {self.min_p}")
        _check(-2.0 <= self.presence_penalty <= 2.0, "presence_penalty",
               f"must be in [-2, 2], got {self.presence_penalty}")
        _check(-2.0 <= self.frequency_penalty <= 2.0, "frequency_penalty",
               f"must be in [-2, 2], got {self.frequency_penalty}")
        _check(math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0.0, "repetition_penalty",
               f"must be finite and positive, got {self.repetition_penalty}")
        if self.seed is not None:
            _check(SEED_RANGE[0] <= self.seed and self.seed + self.num_sequences - 1 <= SEED_RANGE[1], "seed",
                   "must fit a signed 64-bit integer")
        if self.logit_bias:
            _check(all(math.isfinite(v) for v in self.logit_bias.values()), "logit_bias", "values must be finite")
        if self.max_tokens is not None:
            _check(self.max_tokens >= 1, "max_tokens", f"must be at least 1, got {self.max_tokens}")
        _check(self.min_tokens >= 0, "min_tokens", f"must be non-negative, got {self.min_tokens}")
        if self.max_tokens is not None:
            _check(self.min_tokens <= self.max_tokens, "min_tokens",
                   f"must be <= max_tokens ({self.max_tokens}), got {self.min_tokens}")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            _check(value is None or value >= 0, name, f"must be non-negative, got {value}")
        _check(all(s for s in self.stop), "stop", "stop strings must not be empty")
        if self.allowed_token_ids is not None:
            _check(len(self.allowed_token_ids) > 0, "allowed_token_ids", "must not be empty")

    @property
    def greedy(self) -> bool:
        return self.temperature < _GREEDY_EPS

    @property
    def num_sequences(self) -> int:
        """How many sequences are generated; `n` of them are returned."""
        return self.best_of or self.n


class SamplingParamError(ValueError):
    """A sampling parameter out of range; `param` names it for the API's error object."""

    def __init__(self, param: str, message: str):
        super().__init__(f"{param} {message}")
        self.param = param


def _check(ok: bool, param: str, message: str) -> None:
    if not ok:
        raise SamplingParamError(param, message)
