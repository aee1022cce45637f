"""Concurrency, client disconnects, metrics and logs of the server (real HTTP, tiny model)."""
from __future__ import annotations

import asyncio
import json
import logging
import socket
import time

import httpx
import openai
import pytest
from server_utils import MODEL_NAME, metric_value, running_server

from octavo.server.state import ServerSettings

LABELS = {"model_name": MODEL_NAME}


@pytest.fixture(scope="module")
def server():
    settings = ServerSettings(served_model_names=[MODEL_NAME], stats_interval=0.2)
    with running_server(settings) as srv:
        yield srv


def metrics(http) -> str:
    r = http.get("/metrics")
    assert r.status_code == 200
    return r.text


def metric(http, name: str, **labels) -> float:
    value = metric_value(metrics(http), name, {**LABELS, **labels})
    assert value is not None, name
    return value


def wait_idle(http, timeout: float = 20.0) -> str:
    """Poll /metrics until no request runs and no KV block is in use."""
    deadline = time.monotonic() + timeout
    while True:
        text = metrics(http)
        used = metric_value(text, "octavo:num_kv_blocks_used", LABELS)
        running = metric_value(text, "octavo:num_requests_running", LABELS)
        waiting = metric_value(text, "octavo:num_requests_waiting", LABELS)
        if used == 0 and running == 0 and waiting == 0:
            assert metric_value(text, "octavo:kv_cache_usage_perc", LABELS) == 0.0
            return text
        assert time.monotonic() < deadline, f"still busy: blocks={used} running={running} waiting={waiting}"
        time.sleep(0.05)


def test_64_concurrent_streams(server, http):
    async def one(client: openai.AsyncOpenAI, i: int) -> tuple[int, int, int, str]:
        max_tokens = 4 + i % 13
        kw = dict(model=MODEL_NAME, max_tokens=max_tokens, temperature=0.8, seed=i, stream=True,
                  stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
        if i % 2:
            s = await client.chat.completions.create(messages=[{"role": "user", "content": f"request {i}"}], **kw)
        else:
            s = await client.completions.create(prompt=f"Request number {i} says", **kw)
        chunks = [c async for c in s]
        usage = chunks[-1].usage
        ids = {c.id for c in chunks}
        assert len(ids) == 1
        return max_tokens, usage.completion_tokens, len(chunks), ids.pop()

    async def main():
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=120) as client:
            return await asyncio.wait_for(asyncio.gather(*(one(client, i) for i in range(64))), 150)

    before = metric(http, "octavo:generation_tokens_total")
    results = asyncio.run(main())
    assert len(results) == 64
    assert all(want == got for want, got, _, _ in results), results
    assert len({rid for *_, rid in results}) == 64
    expected = sum(want for want, *_ in results)
    assert metric(http, "octavo:generation_tokens_total") - before == expected
    wait_idle(http)


def _start_streams(server, max_tokens: int):
    """Three streams (a completion, a chat, a two-prompt completion: 4 engine requests), each a
    few chunks in."""
    bodies = [("/v1/completions", {"prompt": "Disconnect test"}),
              ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Disconnect test"}]}),
              ("/v1/completions", {"prompt": ["Disconnect one", "Disconnect two"]})]
    clients, streams = [], []
    for path, body in bodies:
        c = httpx.Client(base_url=server.url, timeout=60)
        body = dict(body, model=MODEL_NAME, max_tokens=max_tokens, ignore_eos=True, stream=True)
        s = c.stream("POST", path, json=body)
        r = s.__enter__()
        assert r.status_code == 200
        lines = r.iter_lines()
        got = 0
        while got < 4:  # a few chunks in: the request is running
            if next(lines).startswith("data: {"):
                got += 1
        clients.append(c)
        streams.append(s)
    return clients, streams


def test_disconnect_mid_stream_aborts_and_frees_blocks(server, http):
    wait_idle(http)
    aborted = metric(http, "octavo:request_success_total", finished_reason="abort")
    generated = metric(http, "octavo:generation_tokens_total")
    clients, streams = _start_streams(server, max_tokens=480)
    text = metrics(http)
    assert metric_value(text, "octavo:num_kv_blocks_used", LABELS) > 0
    assert metric_value(text, "octavo:num_requests_running", LABELS) >= 1
    for s, c in zip(streams, clients):  # hang up
        s.__exit__(None, None, None)
        c.close()
    text = wait_idle(http)
    assert metric_value(text, "octavo:request_success_total", {**LABELS, "finished_reason": "abort"}) == aborted + 4
    assert metric_value(text, "octavo:generation_tokens_total", LABELS) - generated < 4 * 480
    assert server.engine.engine.kv.num_free_blocks == server.engine.engine.kv.num_blocks


def test_disconnect_during_non_streaming_request_aborts(server, http):
    """The client hangs up once its request runs (a raw socket: no timing guess)."""
    wait_idle(http)
    aborted = metric(http, "octavo:request_success_total", finished_reason="abort")
    body = json.dumps({"model": MODEL_NAME, "prompt": "Slow one", "max_tokens": 480, "n": 4,
                       "ignore_eos": True}).encode()
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        deadline = time.monotonic() + 20
        while metric(http, "octavo:num_requests_running") < 4:
            assert time.monotonic() < deadline, "the request never ran"
            time.sleep(0.01)
    wait_idle(http)
    assert metric(http, "octavo:request_success_total", finished_reason="abort") == aborted + 4


def test_metrics_cover_the_vllm_set(http):
    r = http.post("/v1/completions", json={"prompt": "metrics", "max_tokens": 5, "ignore_eos": True})
    assert r.status_code == 200
    text = metrics(http)
    for name in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc", "prefix_cache_queries_total",
                 "prefix_cache_hits_total", "num_preemptions_total", "prompt_tokens_total",
                 "generation_tokens_total", "request_success_total", "time_to_first_token_seconds_count",
                 "time_per_output_token_seconds_count", "e2e_request_latency_seconds_count",
                 "inter_token_latency_seconds_count", "request_queue_time_seconds_count",
                 "request_prompt_tokens_count", "request_generation_tokens_count", "prefix_cache_hit_rate"):
        assert f"octavo:{name}" in text, name
    assert metric_value(text, "octavo:time_to_first_token_seconds_count", LABELS) >= 1
    assert metric_value(text, "octavo:e2e_request_latency_seconds_count", LABELS) >= 1
    assert metric_value(text, "octavo:request_success_total", {**LABELS, "finished_reason": "length"}) >= 1
    assert "_created" not in text


def test_prefix_cache_hits_are_counted(http):
    prompt = "A long shared prefix for the prefix cache: " + "block " * 40
    before = metric(http, "octavo:prefix_cache_hits_total")
    for _ in range(2):
        r = http.post("/v1/completions", json={"prompt": prompt, "max_tokens": 2})
        assert r.status_code == 200
    assert r.json()["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    assert metric(http, "octavo:prefix_cache_hits_total") > before


def test_request_and_stats_log_lines(http, caplog):
    caplog.set_level(logging.INFO, logger="octavo.server")
    r = http.post("/v1/completions", json={"prompt": "log me", "max_tokens": 3, "ignore_eos": True})
    rid = r.json()["id"]
    deadline = time.monotonic() + 5
    while not any("Avg prompt throughput" in m for m in caplog.messages):
        assert time.monotonic() < deadline, caplog.messages
        time.sleep(0.05)
    line = next(m for m in caplog.messages if rid in m)
    assert "prompt_tokens=" in line and "completion_tokens=3" in line and "finish=length" in line
    stats = next(m for m in caplog.messages if "Avg prompt throughput" in m)
    for part in ("generation throughput", "Running:", "Waiting:", "KV cache usage", "Prefix cache hit rate"):
        assert part in stats
