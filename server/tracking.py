"""One engine request as the server sees it: started eagerly (so an invalid request fails
before any response byte), measured (metrics and the per-request log line), and aborted when
its consumer goes away. Plus helpers to merge several requests' outputs and to stop work when
the HTTP client disconnects.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any

from fastapi import Request

from octavo.engine.async_engine import RequestFailedError
from octavo.outputs import RequestOutput
from octavo.sampling_params import RequestOutputKind, SamplingParams

from octavo.server.metrics import RequestMetrics, ServerMetrics

logger = logging.getLogger("octavo.server")


class EngineStream:
    """`async for out in stream` yields the engine's outputs for one prompt."""

    def __init__(self, engine, prompt: dict[str, Any], params: SamplingParams, request_id: str,
                 metrics: ServerMetrics, log_requests: bool, endpoint: str):
        self.engine = engine
        self.prompt = prompt
        self.params = params
        self.request_id = request_id
        self.server_metrics = metrics
        self._metrics: RequestMetrics | None = None  # its engine's, once known
        self.log_requests = log_requests
        self.endpoint = endpoint
        self.num_prompt_tokens = len(prompt["prompt_token_ids"])
        self._gen = engine.generate(prompt, params, request_id)
        self._first: asyncio.Task | None = None
        self._seen_output = False
        self._finished = False
        self._closed = False
        self._tokens: dict[int, int] = {}
        self._last_time: float | None = None
        self._times: dict[str, float | None] = {}
        self._finish: dict[int, str] = {}
        self._end_reason = "abort"  # of a request that does not finish: "error" when the engine failed it

    # ------------------------------------------------------------------ start

    def begin(self) -> None:
        """Hand the request to the engine: it validates it before its first await."""
        self._first = asyncio.ensure_future(self._gen.__anext__())

    def check_started(self) -> None:
        """After one event-loop turn: raise the engine's validation error, if any."""
        task = self._first
        if task is not None and task.done() and not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            if not isinstance(exc, StopAsyncIteration):
                self._closed = True
                raise exc

    # ------------------------------------------------------------------ iterate

    async def __aiter__(self) -> AsyncIterator[RequestOutput]:
        try:
            if self._first is None:
                self.begin()
            out = await self._first
            self._first = None
            while True:
                self._record(out)
                yield out
                if out.finished:
                    return
                out = await self._gen.__anext__()
        except StopAsyncIteration:
            return
        except RequestFailedError:
            self._end_reason = "error"
            raise
        finally:
            await self.close()

    @property
    def metrics(self) -> RequestMetrics:
        return self._engine_metrics()

    def _engine_metrics(self) -> RequestMetrics:
        """The series of the engine serving this request (a data-parallel front routes it on
        its first step; until then, and if it never ran, engine 0's)."""
        if self._metrics is None:
            index = self.engine.replica_of(self.request_id)
            if index is None:
                return self.server_metrics.for_engine(0)
            self._metrics = self.server_metrics.for_engine(index)
        return self._metrics

    async def close(self) -> None:
        """Abort the request unless it finished; idempotent."""
        self._engine_metrics()  # learn the engine before the request leaves it
        if self._first is not None and not self._first.done():
            self._first.cancel()
            with contextlib.suppress(BaseException):
                await self._first
        self._first = None
        with contextlib.suppress(BaseException):
            await self._gen.aclose()
        if not self._finished and not self._closed:
            self._closed = True
            self._done([self._end_reason] * max(1, self.params.n))
        self._closed = True

    # ------------------------------------------------------------------ metrics

    def _record(self, out: RequestOutput) -> None:
        now = time.monotonic()
        if not self._seen_output:
            self._seen_output = True
            self.metrics.add_prompt_tokens(self.num_prompt_tokens)
        self._times = out.metrics or self._times
        new = 0
        delta = self.params.output_kind == RequestOutputKind.DELTA
        for c in out.outputs:
            if delta:
                self._tokens[c.index] = self._tokens.get(c.index, 0) + len(c.token_ids)
                new += len(c.token_ids)
            else:
                new += len(c.token_ids) - self._tokens.get(c.index, 0)
                self._tokens[c.index] = len(c.token_ids)
            if c.finish_reason is not None:
                self._finish[c.index] = c.finish_reason
        self.metrics.add_generation_tokens(max(new, 0))
        if delta and new and self._last_time is not None:
            self.metrics.itl.observe((now - self._last_time) / new)
        self._last_time = now
        if out.finished:
            self._finished = True
            self._done([self._finish.get(i, "stop") for i in sorted(self._finish)] or ["stop"])

    def _done(self, reasons: list[str]) -> None:
        now = time.monotonic()
        gen_tokens = sum(self._tokens.values())
        max_len = max(self._tokens.values(), default=0)
        self.metrics.observe_finished(finish_reasons=reasons, prompt_tokens=self.num_prompt_tokens,
                                      generation_tokens=gen_tokens, max_output_len=max_len, times=self._times,
                                      now=now, n=self.params.n, max_tokens=self.params.max_tokens)
        if self.log_requests:
            arrival, first = self._times.get("arrival_time"), self._times.get("first_token_time")
            ttft = f"{first - arrival:.3f}s" if arrival is not None and first is not None else "-"
            e2e = f"{now - arrival:.3f}s" if arrival is not None else "-"
            logger.info("%s %s: prompt_tokens=%d completion_tokens=%d n=%d finish=%s ttft=%s e2e=%s",
                        self.endpoint, self.request_id, self.num_prompt_tokens, gen_tokens, self.params.n,
                        ",".join(reasons), ttft, e2e)


async def start_all(streams: list[EngineStream]) -> None:
    """Submit every request; if any is invalid, abort the others and raise its error."""
    for s in streams:
        s.begin()
    await asyncio.sleep(0)  # each begin() task runs its first step (validation) in this turn
    try:
        for s in streams:
            s.check_started()
    except BaseException:
        for s in streams:
            s._closed = True  # never served: no metrics, no log line
            await s.close()
        raise


async def merge(streams: list[EngineStream]) -> AsyncIterator[tuple[int, RequestOutput]]:
    """(prompt index, output) from all streams as they come."""
    if len(streams) == 1:
        async for out in streams[0]:
            yield 0, out
        return
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(i: int, stream: EngineStream) -> None:
        try:
            async for out in stream:
                queue.put_nowait((i, out))
            queue.put_nowait((i, done))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            queue.put_nowait((i, exc))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            i, item = await queue.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()
        for s in streams:
            await s.close()


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class ClientDisconnected(Exception):
    pass


async def unless_disconnected(request: Request, work: Awaitable):
    """Run `work`; if the client goes away first, cancel it (aborting its engine requests)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        watcher.cancel()
        raise
    watcher.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        raise ClientDisconnected()
    return task.result()
