"""The async engine the server builds on: the step loop runs in a thread of its own.

Requests are validated in the caller's thread (errors surface at once), then handed to the
loop through a queue; outputs flow back into one asyncio queue per request. A request whose
consumer goes away (client disconnect, cancellation) is aborted and its blocks freed.

Which thread steps the engine matters on CPUs: torch's OpenMP intra-op parallelism ran at
full speed only on the process's main thread on the 2-core machines measured (a SmolLM2
decode step took 35 ms there and 52 ms on any other thread). So `octavo serve` builds the
engine with `start_loop=False`, runs `run_engine_loop()` on the main thread and serves HTTP
from another; library users get the loop in a background thread by default.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator

from octavo.config import EngineConfig
from octavo.engine.llm_engine import InputError, LLMEngine, Prompt
from octavo.outputs import RequestOutput
from octavo.sampling_params import SamplingParams

logger = logging.getLogger("octavo")


class EngineDeadError(RuntimeError):
    pass


class AsyncLLM:
    def __init__(self, config: EngineConfig, start_loop: bool = True):
        self.engine = LLMEngine(config)
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._stopped = False
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

    def is_alive(self) -> bool:
        return not self._stopped and self._looping.is_set()

    async def generate(self, prompt: Prompt, params: SamplingParams,
                       request_id: str) -> AsyncIterator[RequestOutput]:
        """Validation happens before the first await: a bad request raises before any output,
        which lets the server fail an invalid streaming request before its stream starts."""
        if self._stopped:
            raise EngineDeadError("the engine has stopped")
        if request_id in self._streams:
            raise InputError(f"request id {request_id!r} is already running", "request_id")
        parent = self.engine.make_request(request_id, prompt, params)
        stream: asyncio.Queue = asyncio.Queue()
        self._streams[request_id] = (asyncio.get_running_loop(), stream)
        self._send("add", parent)
        finished = False
        try:
            while not finished:
                item = await stream.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
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
        """Step the engine until stop(); runs in the calling thread."""
        self._looping.set()
        try:
            self._loop()
        finally:
            self._looping.clear()

    def _loop(self) -> None:
        while not self._stopped:
            self._drain_inbox()
            if not self.engine.has_unfinished_requests():
                self._wake.wait()
                self._wake.clear()
                continue
            try:
                outputs = self.engine.step()
            except Exception as exc:  # fail the requests in flight, keep serving the rest
                logger.exception("engine step failed")
                self._fail_all(exc)
                continue
            for out in outputs:
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
                self.engine.abort_request(payload)

    def _fail_all(self, exc: Exception) -> None:
        for rid in list(self._streams):
            self.engine.abort_request(rid)
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
