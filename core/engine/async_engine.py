"""The async engine the server builds on: the step loop runs in a thread of its own.

Requests are validated in the caller's thread (errors surface at once), then handed to the
loop through a queue; outputs flow back into one asyncio queue per request. A request whose
consumer goes away (client disconnect, cancellation) is aborted and its blocks freed.

Which thread steps the engine matters on CPUs: torch's OpenMP intra-op parallelism ran at
full speed only on the process's main thread on the 2-core machines measured (a SmolLM2
decode step took 35 ms there and 52 ms on any other thread). So `octavo serve` builds the
engine with `start_loop=False`, runs `run_engine_loop()` on the main thread and serves HTTP
from another; library users get the loop in a background thread by default.

A request the engine fails on (see LLMEngine.step) raises RequestFailedError in its consumer
only. If `step()` itself raises, the engine is broken: every consumer gets EngineDeadError,
`is_alive()` turns False and `run_engine_loop()` returns, for the server to exit non-zero. So
it is when the engine's worker processes fail (one died or raised), found by the step that
needs them or, while idle, within a second.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable

from octavo.backend import Backend
from octavo.config import EngineConfig
from octavo.engine.isolation import EngineDeadError
from octavo.engine.llm_engine import InputError, LLMEngine, Prompt
from octavo.executor.base import WorkerError
from octavo.outputs import RequestOutput
from octavo.outputs import PoolingRequestOutput, RequestOutput
from octavo.pooling_params import PoolingParams
from octavo.sampling_params import SamplingParams

logger = logging.getLogger("octavo")
IDLE_CHECK_S = 1.0  # an idle loop wakes this often to notice dead worker processes

__all__ = ["AsyncLLM", "EngineDeadError", "RequestFailedError"]


class RequestFailedError(RuntimeError):
    """The engine failed on this request (and only on it); the cause is in the engine's log."""

    def __init__(self, request_id: str, message: str):
        super().__init__(message)
        self.request_id = request_id


class AsyncLLM:
    def __init__(self, config: EngineConfig, start_loop: bool = True, backend: Backend | None = None,
                 replica: int = 0):
        """`backend` bypasses device selection, as LLMEngine's; `replica`: which data-parallel
        replica this engine is (engine/data_parallel.py)."""
        self.engine = LLMEngine(config, backend, replica)
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._stopped = False
        self.dead: BaseException | None = None  # why the engine broke, once it has
        self._looping = threading.Event()  # set while run_engine_loop runs, wherever
        self._thread: threading.Thread | None = None
        if start_loop:
            self._looping.set()  # alive from construction on, not only once the thread is scheduled
            self._thread = threading.Thread(target=self.run_engine_loop, name="octavo-engine", daemon=True)
            self._thread.start()

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def model_config(self):
        return self.engine.model_config

    @property
    def generation_defaults(self) -> dict:
        return self.engine.generation_defaults

    @property
    def engines(self) -> list[LLMEngine]:
        """The engine cores behind this front (one; data parallelism has several)."""
        return [self.engine]

    def replica_of(self, request_id: str) -> int:
        return 0

    @property
    def runner(self) -> str:
        return self.engine.config.runner

    def is_alive(self) -> bool:
        return (not self._stopped and self.dead is None and self._looping.is_set()
                and self.engine.worker_error() is None)

    def generate(self, prompt: Prompt, params: SamplingParams, request_id: str) -> AsyncIterator[RequestOutput]:
        """Validation happens in the first `__anext__`, before its first await: a bad request
        raises before any output, which lets the server fail an invalid streaming request
        before its stream starts."""
        return self._run(self.engine.make_request, prompt, params, request_id)

    def encode(self, prompt: Prompt, pooling_params: PoolingParams,
               request_id: str) -> AsyncIterator[PoolingRequestOutput]:
        """A pooling runner's request (vLLM's name): one output, once its prompt is pooled;
        validated as `generate`'s."""
        return self._run(self.engine.make_pooling_request, prompt, pooling_params, request_id)

    async def _run(self, make: Callable, prompt: Prompt, params: SamplingParams | PoolingParams,
                   request_id: str) -> AsyncIterator[RequestOutput | PoolingRequestOutput]:
        if request_id in self._streams:
            raise InputError(f"request id {request_id!r} is already running", "request_id")
        parent = make(request_id, prompt, params)
        stream: asyncio.Queue = asyncio.Queue()
        self._streams[request_id] = (asyncio.get_running_loop(), stream)
        if self._stopped or self.dead is not None or self.engine.worker_error() is not None:
            # the loop may have failed the streams it saw
            self._streams.pop(request_id, None)
            raise EngineDeadError("the engine has stopped")
        self._send("add", parent)
        finished = False
        try:
            while not finished:
                item = await stream.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                if item.error is not None:
                    raise RequestFailedError(request_id, item.error)
                yield item
        finally:
            self._streams.pop(request_id, None)
            if not finished:
                self._send("abort", request_id)

    def abort(self, request_id: str) -> None:
        self._send("abort", request_id)

    def stop(self) -> None:
        """Make run_engine_loop return (thread-safe)."""
        self._stopped = True
        self._wake.set()

    def shutdown(self) -> None:
        self.stop()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.engine.shutdown()

    # ------------------------------------------------------------------ engine thread

    def _send(self, kind: str, payload) -> None:
        self._inbox.put((kind, payload))
        self._wake.set()

    def run_engine_loop(self) -> None:
        """Step the engine until stop() or until it breaks (then `dead` says why); runs in the
        calling thread. Requests still waiting then get EngineDeadError."""
        self._looping.set()
        try:
            self._loop()
        except Exception as exc:  # the engine is broken: nothing can be trusted to run on
            logger.critical("the engine is broken and stops: %s: %s", type(exc).__name__, exc, exc_info=exc)
            self.dead = exc
        finally:
            self._looping.clear()
            self._fail_all(EngineDeadError("the engine has stopped"))

    def _loop(self) -> None:
        while not self._stopped:
            self._drain_inbox()
            if not self.engine.has_unfinished_requests():
                self._wake.wait(IDLE_CHECK_S)
                self._wake.clear()
                if (error := self.engine.worker_error()) is not None:
                    raise WorkerError(error)
                continue
            for out in self.engine.step():
                self._deliver(out.request_id, out)

    def _drain_inbox(self) -> None:
        while True:
            try:
                kind, payload = self._inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "add":
                try:
                    self.engine.add(payload)
                except Exception as exc:
                    self._deliver(payload.request_id, exc)
            else:
                try:
                    self.engine.abort_request(payload)
                except Exception:  # noqa: BLE001 - its consumer is gone; the engine went on
                    logger.exception("aborting request %s failed", payload)

    def _fail_all(self, exc: Exception) -> None:
        for rid in list(self._streams):
            self._deliver(rid, exc)

    def _deliver(self, request_id: str, item) -> None:
        target = self._streams.get(request_id)
        if target is None:
            return
        loop, stream = target
        try:
            loop.call_soon_threadsafe(stream.put_nowait, item)
        except RuntimeError:  # the consumer's loop is closed
            pass
