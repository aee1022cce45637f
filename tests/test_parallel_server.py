"""Parallel engines behind a real `octavo serve` (a subprocess on a loopback port), driven by
the official `openai` client and httpx.

- Data parallel 2 on a local Ray cluster: 64 concurrent requests, every answer equal to a
  single engine's, both replicas serving (from their `engine`-labelled metrics).
- Tensor parallel 2 under multiprocessing: a worker killed mid-run fails the pending
  requests with an error within seconds (the engine is dead: 503, or an error event in a
  stream that has started), the server reports unhealthy, logs which worker died, exits 1.
"""
import asyncio
import json
import os
import time

import httpx
import psutil
import pytest

from octavo import LLM, SamplingParams
from server_utils import MODEL_NAME, free_port, metric_value, octavo_serve, server_model_path

SERVE = ["--served-model-name", MODEL_NAME, "--dtype", "float32", "--num-kv-blocks", "256", "--num-threads", "1",
         "--disable-log-requests"]
MAX_TOKENS = 12


def prompts() -> list[list[int]]:
    """8 distinct prompts, each asked 8 times: 64 requests."""
    return [[5 + i, 40 + 3 * i, 7, 100 + i] * (1 + i % 3) for i in range(8)] * 8


async def complete_all(url: str, batch: list[list[int]]) -> list[str]:
    import openai

    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
    async with client:
        answers = await asyncio.gather(*(client.completions.create(
            model=MODEL_NAME, prompt=ids, max_tokens=MAX_TOKENS, temperature=0.0, extra_body={"ignore_eos": True})
            for ids in batch))
    return [a.choices[0].text for a in answers]


def test_data_parallel_on_ray_serves_64_concurrent_requests(ray_cluster):
    batch = prompts()
    reference = LLM(server_model_path(), dtype="float32", num_kv_blocks=256)
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    expected = [o.outputs[0].text for o in reference.generate(prompt_token_ids=batch, sampling_params=params)]
    with octavo_serve([server_model_path(), *SERVE, "--data-parallel-size", "2",
                       "--distributed-executor-backend", "ray"], free_port(), env=dict(os.environ),
                      timeout=240) as server:
        answers = asyncio.run(asyncio.wait_for(complete_all(server.url, batch), timeout=180))
        metrics = httpx.get(server.url + "/metrics", timeout=10).text
    assert answers == expected
    served = [metric_value(metrics, "octavo:request_success_total", {"engine": str(i), "finished_reason": "length"})
              for i in (0, 1)]
    assert all(n and n > 0 for n in served) and sum(served) == len(batch), served
    blocks = [metric_value(metrics, "octavo:num_kv_blocks_total", {"engine": str(i)}) for i in (0, 1)]
    assert blocks == [256.0, 256.0]  # each replica its own cache


async def stream_until_error(url: str, payload: dict, started: asyncio.Event) -> str:
    """The stream's first data chunk sets `started`; returns the error it ends with."""
    async with httpx.AsyncClient(timeout=60) as client:
        async with client.stream("POST", url + "/v1/completions", json={**payload, "stream": True}) as response:
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                started.set()
                event = json.loads(line[len("data: "):])
                if "error" in event:
                    return event["error"]["message"]
    return "the stream ended without an error"


async def post_until_error(url: str, payload: dict) -> str:
    async with httpx.AsyncClient(timeout=60) as client:
        response = await client.post(url + "/v1/completions", json=payload)
    assert response.status_code == 503, response.text
    return response.json()["error"]["message"]


def worker_processes(server) -> list[psutil.Process]:
    """The engine's workers: the children of multiprocessing's fork server under `octavo serve`."""
    forkserver = [p for p in psutil.Process(server.pid).children() if "forkserver" in " ".join(p.cmdline())]
    return forkserver[0].children() if forkserver else []


def test_a_killed_worker_fails_pending_requests_and_the_server():
    payload = {"model": MODEL_NAME, "prompt": [5, 6, 7, 8], "max_tokens": 480, "temperature": 0.0,
               "ignore_eos": True}
    with octavo_serve([server_model_path(), *SERVE, "--tensor-parallel-size", "2"], free_port(), timeout=180) as server:
        workers = worker_processes(server)
        assert len(workers) == 2

        async def run() -> tuple[list[str], float]:
            started = asyncio.Event()
            pending = [asyncio.ensure_future(stream_until_error(server.url, payload, started)) for _ in range(2)]
            pending += [asyncio.ensure_future(post_until_error(server.url, payload)) for _ in range(2)]
            await asyncio.wait_for(started.wait(), timeout=60)  # mid-run
            workers[1].kill()
            killed = time.monotonic()
            errors = await asyncio.wait_for(asyncio.gather(*pending), timeout=30)
            return errors, time.monotonic() - killed

        errors, seconds = asyncio.run(run())
        assert seconds < 10, seconds
        assert all("the engine has stopped" in e for e in errors), errors
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # unhealthy: 503, or already gone
            try:
                if httpx.get(server.url + "/health", timeout=2).status_code == 503:
                    break
            except httpx.TransportError:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the server still reports healthy")
        assert server.wait(timeout=60) == 1  # exits 1: the engine broke
        assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
        log = server.output()
        assert f"worker rank 1 (pid {workers[1].pid}) exited with code -9" in log, log[-3000:]
