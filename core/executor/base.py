"""The engine's view of workers in other processes: one `Worker` for all of them.

An executor is itself a `Worker` (the engine does not know the difference): each call goes
to every rank in the same order, and the answer of rank 0 comes back (the others compute
the same step on their shard; only rank 0 samples). A step is two messages: the
SchedulerOutput, sent without waiting (the ranks start the forward pass while the engine
fills the grammar masks), then the sample request, whose answer is the step's tokens.

A worker that dies or raises ends the engine: the executor raises `WorkerError` from the
call that finds it (at the latest the next one, within a second when idle), stops the other
workers (they may be waiting in a collective for the dead one) and refuses every later call.
"""
from __future__ import annotations

import logging
import threading
from abc import abstractmethod
from typing import Any

from octavo.backend import GrammarBitmask, ModelConfig, ModelRunnerOutput, SchedulerOutput, Worker
from octavo.engine.isolation import EngineDeadError

logger = logging.getLogger("octavo")
SHUTDOWN_GRACE_S = 5.0  # how long workers get to exit after `shutdown` before they are killed


class WorkerError(EngineDeadError):
    """A worker process died or raised; the engine cannot run on (no request is to blame:
    the fault isolation does not retry it)."""


class Executor(Worker):
    """Workers of one engine in other processes (multiprocessing or Ray)."""

    # Its workers are those of a backend with a `distributed_backend`; the in-tree ones are
    # TorchWorkers, which pool.
    supports_pooling = True

    world_size: int

    def __init__(self) -> None:
        self.error: str | None = None  # why the workers stopped, once they have
        self._closing = False  # shutting down: workers exiting is expected
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ transport

    @abstractmethod
    def _send(self, method: str, args_per_rank: list[tuple], reply: list[int]) -> None:
        """Start `method` on every rank (rank r gets args_per_rank[r]); the ranks in `reply`
        will answer. Returns at once."""

    @abstractmethod
    def _replies(self) -> list[Any]:
        """The answers of the last `_send`'s `reply` ranks, in order, once they come; raises
        WorkerError when any rank dies or raises meanwhile."""

    @abstractmethod
    def _stop_workers(self, grace_s: float) -> None:
        """End every worker process, killing those not gone after `grace_s` (some may be
        stuck in a collective)."""

    def fail(self, reason: str) -> WorkerError:
        """Mark the workers dead (the first reason wins) and stop them; returns the error to
        raise. Thread-safe: a watcher thread may call it."""
        with self._lock:
            if self.error is None and not self._closing:
                self.error = reason
                logger.error("engine workers failed: %s", reason)
                self._stop_workers(0.0)
        return WorkerError(self.error or reason)

    def _call(self, method: str, *args: Any) -> list[Any]:
        if self.error is not None:
            raise WorkerError(self.error)
        self._send(method, [args] * self.world_size, list(range(self.world_size)))
        return self._replies()

    # ------------------------------------------------------------------ Worker

    def load_model(self) -> ModelConfig:
        return self._call("load_model")[0]

    def num_kv_blocks(self, block_size: int) -> int:
        return min(self._call("num_kv_blocks", block_size))  # every rank holds every block

    def allocate_kv_cache(self, num_blocks: int, block_size: int) -> None:
        self._call("allocate_kv_cache", num_blocks, block_size)

    def warm_up(self) -> None:
        self._call("warm_up")

    def execute_model(self, batch: SchedulerOutput) -> None:
        if self.error is not None:
            raise WorkerError(self.error)
        self._send("execute_model", [(batch,)] * self.world_size, [])

    def sample_tokens(self, grammar: GrammarBitmask | None) -> ModelRunnerOutput:
        if self.error is not None:
            raise WorkerError(self.error)
        self._send("sample_tokens", [(grammar,)] + [(None,)] * (self.world_size - 1), [0])
        return self._replies()[0]

    def shutdown(self) -> None:
        if self._closing:
            return
        alive, self._closing = self.error is None, True
        if alive:
            try:
                self._call("shutdown")
            except WorkerError:
                pass
        self._stop_workers(SHUTDOWN_GRACE_S)
