"""Data parallelism (`--data-parallel-size N`): N engines behind one server.

Each replica is a whole engine (an `AsyncLLM`: its scheduler, its KV cache, its worker
processes, under multiprocessing or Ray), stepping in a thread of its own; the workers
compute in their own processes, so the replicas run side by side. A request goes to the
replica with the fewest requests in flight (ties in turn), counted from the moment it is
routed, so a burst spreads at once. The front offers what the server uses of an AsyncLLM;
it is alive while every replica is: a replica whose workers fail ends the server, as a lone
engine's would.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor

from octavo.config import ConfigError, EngineConfig
from octavo.engine.async_engine import AsyncLLM, EngineDeadError
from octavo.engine.llm_engine import LLMEngine, Prompt
from octavo.outputs import PoolingRequestOutput, RequestOutput
from octavo.pooling_params import PoolingParams
from octavo.sampling_params import SamplingParams

logger = logging.getLogger("octavo")


class DataParallelLLM:
    def __init__(self, config: EngineConfig):
        if config.data_parallel_size < 2:
            raise ConfigError("DataParallelLLM needs data_parallel_size of 2 or more")
        n = config.data_parallel_size
        with ThreadPoolExecutor(n, thread_name_prefix="octavo-replica-start") as pool:  # load side by side
            starts = [pool.submit(AsyncLLM, dataclasses.replace(config), True, None, i) for i in range(n)]
        self.replicas: list[AsyncLLM] = []
        for start in starts:
            try:
                self.replicas.append(start.result())
            except BaseException:
                self._shutdown_started(starts)
                raise
        self._load = [0] * n  # requests in flight per replica
        self._routes: dict[str, int] = {}
        self._turn = 0
        self._stopped = threading.Event()
        logger.info("%d data-parallel engines ready", n)

    @staticmethod
    def _shutdown_started(starts) -> None:
        for start in starts:
            if start.exception() is None:
                start.result().shutdown()

    # ------------------------------------------------------------------ what the server uses

    @property
    def tokenizer(self):
        return self.replicas[0].tokenizer

    @property
    def model_config(self):
        return self.replicas[0].model_config

    @property
    def generation_defaults(self) -> dict:
        return self.replicas[0].generation_defaults

    @property
    def dead(self) -> BaseException | None:
        """Why a replica broke, once one has."""
        return next((r.dead for r in self.replicas if r.dead is not None), None)

    @property
    def engines(self) -> list[LLMEngine]:
        return [r.engine for r in self.replicas]

    def replica_of(self, request_id: str) -> int | None:
        """The replica serving `request_id` while it runs."""
        return self._routes.get(request_id)

    def is_alive(self) -> bool:
        return not self._stopped.is_set() and all(r.is_alive() for r in self.replicas)

    @property
    def runner(self) -> str:
        return self.replicas[0].runner

    def generate(self, prompt: Prompt, params: SamplingParams, request_id: str) -> AsyncIterator[RequestOutput]:
        """As AsyncLLM.generate, on the least loaded replica (chosen before the first await)."""
        return self._routed(AsyncLLM.generate, prompt, params, request_id)

    def encode(self, prompt: Prompt, pooling_params: PoolingParams,
               request_id: str) -> AsyncIterator[PoolingRequestOutput]:
        """As AsyncLLM.encode, routed as `generate`."""
        return self._routed(AsyncLLM.encode, prompt, pooling_params, request_id)

    async def _routed(self, method: Callable, prompt: Prompt, params: SamplingParams | PoolingParams,
                      request_id: str) -> AsyncIterator[RequestOutput | PoolingRequestOutput]:
        if request_id in self._routes:
            from octavo.engine.llm_engine import InputError

            raise InputError(f"request id {request_id!r} is already running", "request_id")
        if not self.is_alive():
            raise EngineDeadError("the engine has stopped")
        i = self._pick()
        self._routes[request_id] = i
        self._load[i] += 1
        try:
            async for out in method(self.replicas[i], prompt, params, request_id):
                yield out
        finally:
            self._load[i] -= 1
            self._routes.pop(request_id, None)

    def _pick(self) -> int:
        n = len(self.replicas)
        i = min(range(n), key=lambda j: (self._load[j], (j - self._turn) % n))
        self._turn = (i + 1) % n
        return i

    def abort(self, request_id: str) -> None:
        i = self._routes.get(request_id)
        if i is not None:
            self.replicas[i].abort(request_id)

    # ------------------------------------------------------------------ lifetime

    def run_engine_loop(self) -> None:
        """Block until stop() or until a replica dies (each replica steps in its own thread)."""
        while not self._stopped.wait(0.5):
            if not all(r.is_alive() for r in self.replicas):
                logger.error("a data-parallel engine stopped; stopping the others")
                break
        self.stop()

    def stop(self) -> None:
        self._stopped.set()
        for r in self.replicas:
            r.stop()

    def shutdown(self) -> None:
        self.stop()
        for r in self.replicas:
            r.shutdown()
