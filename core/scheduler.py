"""Continuous batching with one mechanism, as in vLLM v1.

Every request carries `num_computed_tokens`; each step hands tokens to requests until the
token budget is spent. A decode is a request one token behind, a prefill one many tokens
behind, a chunked prefill one that gets only part of its backlog; a prefix-cache hit starts
a request ahead, and a preemption sends it back to zero (recompute). Running requests are
served first, in arrival order; when blocks run out the newest running request is preempted.

The step goes to the worker as changes: a request the worker has not seen (new, or resumed
after a preemption) is sent whole once, then each step only its new tokens and blocks.
Finished ids reach the worker with the next step that runs anything.

A pooling request (the pooling runner's) is a prompt alone: it finishes in the step that ends
its prompt, with the worker's pooled hidden state instead of a sampled token.

Guided decoding (as vLLM's WAITING_FOR_FSM): a waiting request whose grammar is still
compiling is passed over, keeping its place; each step `grammar_bitmask` fills the masks of
the guided requests that sample (while the worker runs the forward pass), and `update`
advances their matchers. A reasoning model's grammar waits for the end of its think block
(`StructuredOutputParams.reasoning_end_ids`): no mask until then.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from octavo.backend import GrammarBitmask, ModelRunnerOutput, NewRequestData, ScheduledRequest, SchedulerOutput
from octavo.kv_cache import KVCacheManager
from octavo.request import Request, RequestStatus
from octavo.structured_output import StructuredOutputManager


@dataclass(slots=True)
class SchedulerStats:
    num_running: int = 0
    num_waiting: int = 0
    kv_usage: float = 0.0
    num_preemptions: int = 0  # total so far
    prefix_queries: int = 0
    prefix_hits: int = 0
    prompt_tokens: int = 0  # totals so far: prompt tokens computed (recomputation included)
    generation_tokens: int = 0


class Scheduler:
    def __init__(self, kv: KVCacheManager, max_num_seqs: int, max_num_batched_tokens: int,
                 enable_chunked_prefill: bool = True, structured_output: StructuredOutputManager | None = None):
        self.kv = kv
        self.structured_output = structured_output
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.enable_chunked_prefill = enable_chunked_prefill
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self.finished_ids: set[str] = set()  # to tell the worker, next step
        self.failed_ids: list[str] = []  # ended because their grammar failed to compile
        self.num_preemptions = 0
        self.prompt_tokens = 0
        self.generation_tokens = 0

    # ------------------------------------------------------------------ queue

    def add_request(self, request: Request) -> None:
        self.requests[request.request_id] = request
        self.waiting.append(request)

    def finish_requests(self, request_ids, status: RequestStatus) -> list[Request]:
        """End requests from outside (abort, stop string); unknown ids are ignored."""
        done = []
        for rid in request_ids:
            request = self.requests.get(rid)
            if request is None or request.status.finished:
                continue
            if request.status == RequestStatus.RUNNING:
                self.running.remove(request)
            else:
                self.waiting.remove(request)
            request.status = status
            self._free(request)
            done.append(request)
        return done

    def preempt_requests(self, request_ids) -> None:
        """Send running requests back to the queue to be recomputed: their step's work is void."""
        for rid in request_ids:
            request = self.requests.get(rid)
            if request is not None and request.status == RequestStatus.RUNNING:
                self.running.remove(request)
                self._preempt(request)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def stats(self) -> SchedulerStats:
        return SchedulerStats(len(self.running), len(self.waiting), self.kv.usage, self.num_preemptions,
                              self.kv.prefix_queries, self.kv.prefix_hits, self.prompt_tokens,
                              self.generation_tokens)

    # ------------------------------------------------------------------ schedule

    def schedule(self) -> SchedulerOutput:
        budget = self.max_num_batched_tokens
        scheduled: list[tuple[Request, int]] = []
        preempted = False

        i = 0
        while i < len(self.running) and budget > 0:
            request = self.running[i]
            num_new = min(request.num_tokens - request.num_computed_tokens, budget)
            while not self.kv.allocate_slots(request, num_new):
                victim = self.running.pop()
                self._preempt(victim)
                preempted = True
                if victim is request:
                    break
            else:
                scheduled.append((request, num_new))
                budget -= num_new
                i += 1

        compiling: list[Request] = []
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs and not preempted:
            request = self.waiting[0]
            if request.grammar is not None and not request.grammar.ready():
                self.waiting.popleft()
                if request.grammar.failed:
                    self._fail(request)
                else:
                    compiling.append(request)
                continue
            hits = self.kv.get_computed_blocks(request)
            num_computed = len(hits) * self.kv.block_size
            num_new = request.num_tokens - num_computed
            if num_new > budget and not self.enable_chunked_prefill:
                break
            num_new = min(num_new, budget)
            if not self.kv.allocate_slots(request, num_new, hits):
                break
            self.waiting.popleft()
            if request.num_cached_tokens < 0:
                request.num_cached_tokens = num_computed
            request.num_computed_tokens = num_computed
            request.status = RequestStatus.RUNNING
            request.first_scheduled_time = request.first_scheduled_time or time.monotonic()
            self.running.append(request)
            scheduled.append((request, num_new))
            budget -= num_new
        self.waiting.extendleft(reversed(compiling))

        out = SchedulerOutput(new_requests=[], requests=[],
                              num_batched_tokens=self.max_num_batched_tokens - budget,
                              block_size=self.kv.block_size)
        for request, num_new in scheduled:
            out.requests.append(self._describe(request, num_new, out.new_requests))
        if scheduled:
            out.finished_request_ids, self.finished_ids = self.finished_ids, set()
        return out

    def _describe(self, request: Request, num_new: int, new_requests: list[NewRequestData]) -> ScheduledRequest:
        """The request's share of the step, as changes since the worker last saw it."""
        if request.num_sent_tokens == 0:
            new_requests.append(_whole(request))
            new_tokens = []
        else:
            new_tokens = request.token_ids[request.num_sent_tokens:]
        request.num_sent_tokens = request.num_tokens
        new_blocks = self.kv.block_ids(request.request_id, start=request.num_sent_blocks)
        request.num_sent_blocks += len(new_blocks)
        return ScheduledRequest(request.request_id, request.num_computed_tokens, num_new, new_tokens, new_blocks,
                                samples=request.num_computed_tokens + num_new == request.num_tokens)

    def resend(self, batch: SchedulerOutput, rows: list[int]) -> SchedulerOutput:
        """The step's requests at `rows`, each sent whole (all its tokens and blocks), to run
        part of a failed step again: how much of the step the worker had taken in is unknown."""
        out = SchedulerOutput([], [], 0, self.kv.block_size, set(batch.finished_request_ids))
        for row in rows:
            scheduled = batch.requests[row]
            out.new_requests.append(_whole(self.requests[scheduled.request_id]))
            out.requests.append(ScheduledRequest(scheduled.request_id, scheduled.num_computed_tokens,
                                                 scheduled.num_new_tokens, [], self.kv.block_ids(scheduled.request_id),
                                                 scheduled.samples))
            out.num_batched_tokens += scheduled.num_new_tokens
        return out

    def grammar_bitmask(self, batch: SchedulerOutput) -> GrammarBitmask | None:
        """The token masks of the step's guided requests that sample (None: no such request)."""
        rows, grammars = [], []
        for i, scheduled in enumerate(batch.requests):
            request = self.requests.get(scheduled.request_id)
            grammar = request.grammar if request is not None and scheduled.samples else None
            if grammar is not None and grammar.active:
                rows.append(i)
                grammars.append(grammar)
        return GrammarBitmask(rows, self.structured_output.bitmask(grammars)) if rows else None

    def _preempt(self, request: Request) -> None:
        self.kv.free(request)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.num_sent_tokens = request.num_sent_blocks = 0  # it goes to the worker whole again
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(request)

    # ------------------------------------------------------------------ update

    def update(self, batch: SchedulerOutput, result: ModelRunnerOutput) -> list[tuple[Request, int]]:
        """Advance the scheduled requests; returns (request, new token) for those that sampled."""
        sampled = []
        guided, guided_tokens = [], []
        for scheduled, token_id in zip(batch.requests, result.sampled_token_ids):
            request = self.requests.get(scheduled.request_id)
            if request is None or request.status != RequestStatus.RUNNING:
                continue  # aborted while the step ran
            done = request.num_computed_tokens + scheduled.num_new_tokens
            self.prompt_tokens += max(0, min(done, request.num_prompt_tokens) - request.num_computed_tokens)
            request.num_computed_tokens = done
            if token_id < 0:
                if request.pooling_params is not None and done == request.num_tokens:
                    self._finish_pooled(request, result)
                continue
            request.append_token(token_id)
            self.generation_tokens += 1
            sampled.append((request, token_id))
            if request.check_stop(token_id):
                self.running.remove(request)
                self._free(request)
            elif request.grammar is not None and request.grammar.active:
                guided.append(request.grammar)
                guided_tokens.append(token_id)
            elif request.grammar is not None and request.grammar.reasoning_end is not None:
                request.grammar.end_reasoning(request.token_ids, request.num_output_tokens)
        if guided:
            self.structured_output.accept(guided, guided_tokens)
        return sampled

    def _finish_pooled(self, request: Request, result: ModelRunnerOutput) -> None:
        if request.request_id not in result.pooler_output:
            raise RuntimeError(f"the worker ran request {request.request_id}'s whole prompt under the pooling "
                               "runner but returned no pooled output for it")
        request.status = RequestStatus.FINISHED_STOPPED
        self.running.remove(request)
        self._free(request)

    def _fail(self, request: Request) -> None:
        request.status = RequestStatus.FINISHED_ABORTED
        self._free(request)
        self.failed_ids.append(request.request_id)

    def _free(self, request: Request) -> None:
        self.kv.free(request)
        del self.requests[request.request_id]
        self.finished_ids.add(request.request_id)
        request.grammar = None  # the matcher goes now, not when the last reference to the request does


def _whole(request: Request) -> NewRequestData:
    return NewRequestData(request.request_id, request.prompt_token_ids, request.output_token_ids,
                          request.sampling_params, request.eos_token_id)
