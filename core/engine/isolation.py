"""Fault isolation: when a step raises, find the requests that cause it.

The step's requests are run again in halves, in step order, until every group that still
fails is one request: those requests fail, the others keep the results of the groups that
ran. Each group runs as a step of its own with its requests sent to the worker whole (how
much of the failed step the worker had taken in is unknown). Running in step order matters
because a request may hit, through the prefix cache, blocks that a request before it in the
same step is writing; a request whose hits were being written by a failed one read garbage,
so its result is void (the engine recomputes it).

A request that fails alone may still be innocent: a broken device fails everything. When
requests of `BROKEN_AFTER` different callers have failed alone with no successful step in
between, the engine itself is taken to be broken (EngineDeadError): the server reports it and
exits so a supervisor restarts it, rather than failing every request forever.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from octavo.backend import ModelRunnerOutput, SchedulerOutput

logger = logging.getLogger("octavo")

BROKEN_AFTER = 3


class EngineDeadError(RuntimeError):
    """The engine cannot serve any request any more; only a restart helps."""


@dataclass(slots=True)
class StepFaults:
    failed: dict[int, Exception] = field(default_factory=dict)  # row -> what it raised, alone
    void: list[int] = field(default_factory=list)  # rows that read blocks a failed row was writing


class FaultIsolator:
    """Runs steps through `run`; on an exception, bisects the step (see the module doc)."""

    def __init__(self, run: Callable[[SchedulerOutput], ModelRunnerOutput],
                 resend: Callable[[SchedulerOutput, list[int]], SchedulerOutput],
                 block_ids: Callable[[str], list[int]], owner: Callable[[str], str | None]):
        self.run_step = run  # execute_model + sample_tokens
        self.resend = resend  # rows of a step as a step of their own, each request sent whole
        self.block_ids = block_ids  # a request's KV blocks, all of them
        self.owner = owner  # a scheduled request id -> the caller's request id
        self.failed_owners: set[str] = set()  # failed alone since the last successful run

    def run(self, batch: SchedulerOutput) -> tuple[ModelRunnerOutput, StepFaults | None]:
        try:
            result = self.run_step(batch)
        except EngineDeadError:  # the engine itself (its worker processes): nothing to isolate
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of the step is isolated
            logger.warning("a step of %d requests failed (%s: %s); running them again in smaller groups "
                           "to find the cause", len(batch.requests), type(exc).__name__, exc)
            return self._isolate(batch, exc)
        self.failed_owners.clear()
        return result, None

    def _isolate(self, batch: SchedulerOutput, exc: Exception) -> tuple[ModelRunnerOutput, StepFaults]:
        out = ModelRunnerOutput([-1] * len(batch.requests))
        faults = StepFaults()

        def bisect(rows: list[int], error: Exception | None) -> None:
            if error is None:
                try:
                    part = self.run_step(self.resend(batch, rows))
                except EngineDeadError:
                    raise
                except Exception as exc:  # noqa: BLE001
                    error = exc
                else:
                    _merge(out, part, rows)
                    self.failed_owners.clear()
                    return
            if len(rows) == 1:
                self._failed_alone(batch.requests[rows[0]].request_id, error)
                faults.failed[rows[0]] = error
                return
            mid = len(rows) // 2
            bisect(rows[:mid], None)
            bisect(rows[mid:], None)

        bisect(list(range(len(batch.requests))), exc)
        faults.void = self._dependants(batch, set(faults.failed))
        return out, faults

    def _failed_alone(self, request_id: str, error: Exception) -> None:
        self.failed_owners.add(self.owner(request_id) or request_id)
        if len(self.failed_owners) >= BROKEN_AFTER:
            raise EngineDeadError(f"requests of {len(self.failed_owners)} callers failed one by one with no "
                                  f"successful step between them (last: {type(error).__name__}: {error}); "
                                  "the engine is broken") from error

    def _dependants(self, batch: SchedulerOutput, failed: set[int]) -> list[int]:
        """Rows that read blocks a failed row (or a row void through one) was writing. A row can
        only depend on rows before it, so one pass in step order finds them all."""
        if not failed:
            return []
        bs = batch.block_size
        blocks = [self.block_ids(r.request_id) for r in batch.requests]

        def written(i: int) -> list[int]:
            r = batch.requests[i]
            return blocks[i][r.num_computed_tokens // bs:-(-(r.num_computed_tokens + r.num_new_tokens) // bs)]

        garbage = {b for i in failed for b in written(i)}
        void = []
        for i, r in enumerate(batch.requests):
            if i not in failed and not garbage.isdisjoint(blocks[i][:-(-r.num_computed_tokens // bs)]):
                void.append(i)
                garbage.update(written(i))
        return void


def _merge(into: ModelRunnerOutput, part: ModelRunnerOutput, rows: list[int]) -> None:
    for row, token in zip(rows, part.sampled_token_ids):
        into.sampled_token_ids[row] = token
    into.logprobs.update(part.logprobs)
    into.prompt_logprobs.update(part.prompt_logprobs)
    into.pooler_output.update(part.pooler_output)
