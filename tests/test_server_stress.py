"""A real `octavo serve` process on 127.0.0.1 under load and at the end of its life:

- 500 mixed requests (completions and chat, streamed and not, n = 2, logprobs, stop strings,
  100 clients hanging up mid-stream) at concurrency 32: no unexpected failure, and afterwards
  0 running, 0 waiting, every KV block free; then SIGTERM drains the stream in flight and the
  process exits 0;
- a broken device (`--device faulty`, a backend registered through the contract's entry
  point): requests fail with error objects, then the process exits 1 for a supervisor.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import httpx
import pytest
from faulty_backend import install_entry_point
from server_utils import MODEL_NAME, free_port, metric_value, octavo_serve, server_model_path, sse_events

C, CHAT = "/v1/completions", "/v1/chat/completions"
NUM_REQUESTS, CONCURRENCY = 500, 32
SERVE_ARGS = ["--dtype", "float32", "--num-kv-blocks", "128", "--served-model-name", MODEL_NAME,
              "--disable-log-requests", "--disable-log-stats", "--disable-uvicorn-access-log",
              "--uvicorn-log-level", "warning"]


def _request(i: int) -> tuple[str, dict, bool]:
    """(path, body, hang up mid-stream) for request i: ten kinds, two of them hang up."""
    kind = i % 10
    chat = kind in (2, 3, 5, 8)
    body = {"model": MODEL_NAME, "max_tokens": 4 + i % 12, "temperature": 0.8, "seed": i}
    if chat:
        body["messages"] = [{"role": "user", "content": f"load request {i}"}]
    else:
        body["prompt"] = f"Load request {i} says"
    hang_up = kind in (4, 5)
    body["stream"] = kind in (1, 3, 4, 5, 7)
    if hang_up:
        body.update(max_tokens=200, ignore_eos=True)
    if kind in (0, 7, 8):
        body["n"] = 2
    if kind == 0:
        body["logprobs"] = 2
    if kind == 2:
        body.update(logprobs=True, top_logprobs=2)
    if kind in (1, 6):
        body["stop"] = [" the", "\n", "ing"]
    return (CHAT if chat else C), body, hang_up


async def _one(client: httpx.AsyncClient, i: int) -> str | None:
    """None, or what went wrong."""
    path, body, hang_up = _request(i)
    if not body["stream"]:
        r = await client.post(path, json=body)
        if r.status_code != 200:
            return f"{i}: {r.status_code} {r.text[:200]}"
        choices = r.json()["choices"]
        ok = len(choices) == body.get("n", 1) and all(c["finish_reason"] in ("stop", "length") for c in choices)
        return None if ok else f"{i}: {choices}"
    async with client.stream("POST", path, json=body) as r:
        if r.status_code != 200:
            return f"{i}: {r.status_code}"
        events = []
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                events.append(line[len("data: "):])
                if hang_up and len(events) == 3:
                    return None  # leaving the block closes the connection mid-stream
    if events[-1] != "[DONE]" or any('"error"' in e for e in events):
        return f"{i}: {events[-2:]}"
    return None


def _wait_idle(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    labels = {"model_name": MODEL_NAME}
    while True:
        text = httpx.get(url + "/metrics").text
        values = [metric_value(text, f"octavo:{name}", labels)
                  for name in ("num_requests_running", "num_requests_waiting", "num_kv_blocks_used")]
        if values == [0, 0, 0]:
            return
        assert time.monotonic() < deadline, f"not idle: running, waiting, blocks used = {values}"
        time.sleep(0.1)


def test_load_then_sigterm_drains():
    port = free_port()
    with octavo_serve([server_model_path(), *SERVE_ARGS, "--shutdown-timeout", "60"], port, timeout=180) as proc:
        async def main():
            limit = asyncio.Semaphore(CONCURRENCY)
            async with httpx.AsyncClient(base_url=proc.url, timeout=120,
                                         limits=httpx.Limits(max_connections=CONCURRENCY)) as client:
                async def bounded(i):
                    async with limit:
                        return await _one(client, i)

                return await asyncio.wait_for(asyncio.gather(*(bounded(i) for i in range(NUM_REQUESTS))), 600)

        start = time.monotonic()
        failures = [f for f in asyncio.run(main()) if f is not None]
        seconds = time.monotonic() - start
        assert not failures, failures[:5]
        _wait_idle(proc.url)
        metrics = httpx.get(proc.url + "/metrics").text
        aborted = metric_value(metrics, "octavo:request_success_total", {"finished_reason": "abort"})
        assert aborted >= 90, aborted  # the hang-ups were aborted (a few may have finished first)
        print(f"{NUM_REQUESTS} requests at concurrency {CONCURRENCY}: {seconds:.1f} s")

        # SIGTERM while a stream runs: it finishes, new connections are refused, the process exits 0.
        body = {"model": MODEL_NAME, "prompt": "drain", "max_tokens": 150, "ignore_eos": True, "stream": True,
                "stream_options": {"include_usage": True}}
        with httpx.stream("POST", proc.url + C, json=body, timeout=120) as r:
            lines = r.iter_lines()
            assert next(line for line in lines if line.startswith("data: {"))
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            with pytest.raises(httpx.TransportError):  # no new connections while draining
                httpx.get(proc.url + "/health", timeout=2)
            events = sse_events("\n".join(lines))
        assert events[-1] == "[DONE]" and json.loads(events[-2])["usage"]["completion_tokens"] == 150
        assert proc.wait(timeout=60) == 0, proc.output()[-3000:]
    assert "finishing in-flight requests" in proc.output()


def test_a_broken_device_exits_non_zero(tmp_path):
    env = dict(os.environ, PYTHONPATH=install_entry_point(str(tmp_path)))
    port = free_port()
    with octavo_serve([server_model_path(), *SERVE_ARGS, "--device", "faulty"], port, env=env, timeout=180) as proc:
        statuses = []
        for i in range(3):
            r = httpx.post(proc.url + C, json={"model": MODEL_NAME, "prompt": f"r{i}", "max_tokens": 4}, timeout=60)
            assert set(r.json()["error"]) == {"message", "type", "param", "code"}
            statuses.append(r.status_code)
        assert statuses[:2] == [500, 500] and statuses[2] in (500, 503), statuses
        assert proc.wait(timeout=60) == 1
    output = proc.output()
    assert "the engine is broken" in output and "injected fault" in output
    with pytest.raises(httpx.TransportError):
        httpx.get(proc.url + "/health", timeout=2)
