"""From sampled token ids to RequestOutputs: detokenization, stop strings, logprobs, n > 1;
and from pooled hidden states to the pooling runner's PoolingRequestOutputs."""
from __future__ import annotations

import concurrent.futures as cf
import math
import time
from dataclasses import dataclass, field

import torch

from octavo.backend import ModelRunnerOutput, TokenLogprobs
from octavo.detokenizer import IncrementalDetokenizer
from octavo.outputs import (CompletionOutput, Logprob, PoolingOutput, PoolingRequestOutput, PositionLogprobs,
                            RequestOutput)
from octavo.pooling_params import PoolingParams
from octavo.request import Request, RequestStatus
from octavo.sampling_params import RequestOutputKind, SamplingParams


@dataclass(slots=True, eq=False)
class SequenceState:
    """One generated sequence: a child request of its parent."""

    index: int
    request_id: str
    detokenizer: IncrementalDetokenizer
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[PositionLogprobs] | None = None  # None: not asked for
    cumulative_logprob: float | None = None  # None: no logprobs computed
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    num_sent: int = 0  # tokens already streamed (DELTA)
    finish_sent: bool = False  # DELTA: the finish reason went out once


@dataclass(slots=True, eq=False)
class ParentState:
    """What the caller asked for: one prompt, n (or best_of) sequences."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    seqs: list[SequenceState]
    prompt_logprobs: list[PositionLogprobs | None] | None = None
    prompt_logprobs_sent: bool = False
    num_cached_tokens: int = 0
    arrival_time: float = field(default_factory=time.monotonic)
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    grammar: cf.Future | None = None  # guided decoding: the compiled grammar, shared by the sequences

    @property
    def finished(self) -> bool:
        return all(s.finish_reason is not None for s in self.seqs)

    @property
    def kind(self) -> RequestOutputKind:
        if self.params.num_sequences > self.params.n:
            return RequestOutputKind.FINAL_ONLY  # the best n are known only at the end
        return self.params.output_kind


@dataclass(slots=True, eq=False)
class PoolingState:
    """A pooling request: one prompt, one embedding. `params` are resolved (nothing None but
    `dimensions`)."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: PoolingParams
    arrival_time: float = field(default_factory=time.monotonic)


class OutputProcessor:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.parents: dict[str, ParentState] = {}
        self.seqs: dict[str, tuple[ParentState, SequenceState]] = {}
        self.pooling: dict[str, PoolingState] = {}

    def add(self, parent: ParentState | PoolingState) -> None:
        if isinstance(parent, PoolingState):
            self.pooling[parent.request_id] = parent
            return
        self.parents[parent.request_id] = parent
        for seq in parent.seqs:
            self.seqs[seq.request_id] = (parent, seq)
        if parent.params.prompt_logprobs is not None:
            parent.prompt_logprobs = [None]

    def has(self, request_id: str) -> bool:
        return request_id in self.parents or request_id in self.pooling

    def parent_id(self, child_id: str) -> str | None:
        entry = self.seqs.get(child_id)
        if entry is None:
            return child_id if child_id in self.pooling else None  # a pooling request is its own child
        return entry[0].request_id

    def child_ids(self, request_id: str) -> list[str]:
        if request_id in self.pooling:
            return [request_id]
        parent = self.parents.get(request_id)
        return [s.request_id for s in parent.seqs if s.finish_reason is None] if parent else []

    # ------------------------------------------------------------------ per step

    def process(self, sampled: list[tuple[Request, int]], result: ModelRunnerOutput
                ) -> tuple[list[RequestOutput | PoolingRequestOutput], list[str], dict[str, Exception]]:
        """Returns the outputs to deliver, the child ids a stop string ended, and the child ids
        whose processing raised (with the exception): the engine fails those alone."""
        touched: dict[str, ParentState] = {}
        stopped: list[str] = []
        errors: dict[str, Exception] = {}
        for rid, lps in result.prompt_logprobs.items():
            parent, seq = self.seqs[rid]
            if seq.index == 0:
                parent.prompt_logprobs.extend(self._to_positions(lps))
        now = time.monotonic()
        for request, token_id in sampled:
            parent, seq = self.seqs[request.request_id]
            try:
                if self._append(parent, seq, request, token_id, result, now):
                    stopped.append(request.request_id)
            except Exception as exc:  # noqa: BLE001 - one request's failure, not the step's
                errors[request.request_id] = exc
                continue
            touched[parent.request_id] = parent
        outputs = [out for p in touched.values() if (out := self._output(p)) is not None]
        for rid, hidden in result.pooler_output.items():
            state = self.pooling.get(rid)
            if state is None:
                continue  # aborted while the step ran
            try:
                outputs.append(PoolingRequestOutput(rid, PoolingOutput(_embedding(hidden, state.params)),
                                                    state.prompt_token_ids))
            except Exception as exc:  # noqa: BLE001 - one request's failure, not the step's
                errors[rid] = exc
                continue
            del self.pooling[rid]
        return outputs, stopped, errors

    def _append(self, parent: ParentState, seq: SequenceState, request: Request, token_id: int,
                result: ModelRunnerOutput, now: float) -> bool:
        """Add one sampled token to its sequence; True when a stop string ended it."""
        parent.first_token_time = parent.first_token_time or now
        parent.first_scheduled_time = parent.first_scheduled_time or request.first_scheduled_time
        parent.num_cached_tokens = max(request.num_cached_tokens, 0)
        seq.token_ids.append(token_id)
        lps = result.logprobs.get(request.request_id)
        if lps is not None:
            seq.cumulative_logprob = (seq.cumulative_logprob or 0.0) + lps.logprobs[0][0]
            if seq.logprobs is not None:
                seq.logprobs.extend(self._to_positions(lps))
        # A stop token's text is left out unless include_stop_str_in_output (as vLLM).
        stop_str = seq.detokenizer.update(
            [token_id], stop_terminated=request.status == RequestStatus.FINISHED_STOPPED)
        if stop_str is not None:
            seq.finish_reason, seq.stop_reason = "stop", stop_str
            return True
        if request.status.finished:
            seq.finish_reason, seq.stop_reason = request.status.finish_reason, request.stop_reason
        return False

    def abort(self, request_id: str, error: str | None = None) -> RequestOutput | PoolingRequestOutput | None:
        """End every unfinished sequence of a request; the final output says `abort`, or
        `error` (with the message) when the engine failed on it."""
        pooled = self.pooling.pop(request_id, None)
        if pooled is not None:
            return PoolingRequestOutput(request_id, None, pooled.prompt_token_ids, error=error)
        parent = self.parents.get(request_id)
        if parent is None:
            return None
        for seq in parent.seqs:
            if seq.finish_reason is None:
                seq.finish_reason = "abort" if error is None else "error"
        try:
            out = self._output(parent)
        finally:
            self._forget(parent)  # even if building the output failed: nothing may linger
        if out is not None:
            out.error = error
        return out

    # ------------------------------------------------------------------ outputs

    def _to_positions(self, lps: TokenLogprobs) -> list[PositionLogprobs]:
        positions = []
        for ids, values, rank in zip(lps.token_ids, lps.logprobs, lps.ranks):
            entry = {ids[0]: Logprob(values[0], rank, self.tokenizer.decode([ids[0]]))}
            for r, (tid, value) in enumerate(zip(ids[1:], values[1:]), start=1):
                entry.setdefault(tid, Logprob(value, r, self.tokenizer.decode([tid])))
            positions.append(entry)
        return positions

    def _output(self, parent: ParentState) -> RequestOutput | None:
        finished = parent.finished
        kind = parent.kind
        if kind == RequestOutputKind.FINAL_ONLY and not finished:
            return None
        if kind == RequestOutputKind.DELTA:
            completions = [self._delta(s) for s in parent.seqs
                           if len(s.token_ids) > s.num_sent or (s.finish_reason is not None and not s.finish_sent)]
        else:
            completions = [self._cumulative(s) for s in parent.seqs]
        if parent.params.num_sequences > parent.params.n:
            completions = self._best(completions, parent.params)
        prompt_logprobs = parent.prompt_logprobs
        if kind == RequestOutputKind.DELTA:
            prompt_logprobs = None if parent.prompt_logprobs_sent else prompt_logprobs
            parent.prompt_logprobs_sent = True
        if finished:
            self._forget(parent)
        metrics = {"arrival_time": parent.arrival_time, "first_scheduled_time": parent.first_scheduled_time,
                   "first_token_time": parent.first_token_time}
        return RequestOutput(parent.request_id, parent.prompt, parent.prompt_token_ids, completions,
                             finished, prompt_logprobs, parent.num_cached_tokens, metrics)

    def _cumulative(self, seq: SequenceState) -> CompletionOutput:
        if seq.finish_reason is not None:
            seq.detokenizer.finish()
        return CompletionOutput(seq.index, seq.detokenizer.output_text, list(seq.token_ids),
                                seq.cumulative_logprob, list(seq.logprobs) if seq.logprobs is not None else None,
                                seq.finish_reason, seq.stop_reason)

    def _delta(self, seq: SequenceState) -> CompletionOutput:
        if seq.finish_reason is not None:
            seq.detokenizer.finish()
            seq.finish_sent = True
        start, seq.num_sent = seq.num_sent, len(seq.token_ids)
        return CompletionOutput(seq.index, seq.detokenizer.get_next_delta(), seq.token_ids[start:],
                                seq.cumulative_logprob, seq.logprobs[start:] if seq.logprobs is not None else None,
                                seq.finish_reason, seq.stop_reason)

    @staticmethod
    def _best(completions: list[CompletionOutput], params: SamplingParams) -> list[CompletionOutput]:
        """best_of: keep the n sequences with the highest cumulative logprob."""
        # A sequence ended (aborted) before its first token has no score yet: it ranks last.
        best = sorted(completions, key=lambda c: -math.inf if c.cumulative_logprob is None else c.cumulative_logprob,
                      reverse=True)[:params.n]
        for index, c in enumerate(best):
            c.index = index
            if params.logprobs is None:
                c.logprobs = c.cumulative_logprob = None
        return best

    def _forget(self, parent: ParentState) -> None:
        self.parents.pop(parent.request_id, None)
        for seq in parent.seqs:
            self.seqs.pop(seq.request_id, None)


def _embedding(hidden: torch.Tensor, params: PoolingParams) -> torch.Tensor:
    """Matryoshka truncation first, so that the kept values are renormalised."""
    data = hidden[:params.dimensions] if params.dimensions is not None else hidden
    return torch.nn.functional.normalize(data, dim=-1) if params.normalize else data
