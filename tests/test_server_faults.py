"""The server stays up whatever one request does (real HTTP, tiny model):

- fault injection through the backend contract: the worker raises for one chosen request id
  (the client's X-Request-Id); that request gets a 500 naming its id (or an error event in its
  stream), its concurrent neighbours complete with the tokens they get alone, no block leaks;
- liveness: with a 16-block cache, 20 concurrent requests of mixed sizes all finish or are
  refused at admission within a time bound;
- a slow chat template runs off the event loop: /health answers while it renders.
"""
from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import pytest
from faulty_backend import FaultyBackend
from server_utils import MODEL_NAME, running_server, sse_events

from octavo.server.state import ServerSettings

C, CHAT = "/v1/completions", "/v1/chat/completions"


def assert_idle(engine) -> None:
    deadline = time.monotonic() + 20
    while engine.has_unfinished_requests() or engine.outputs.parents:
        assert time.monotonic() < deadline, "requests left in the engine"
        time.sleep(0.05)
    assert engine.kv.num_free_blocks == engine.kv.num_blocks


# ---------------------------------------------------------------------------- fault injection


@pytest.fixture(scope="module")
def faulty_server():
    settings = ServerSettings(served_model_names=[MODEL_NAME], log_stats=False)
    with running_server(settings, backend=FaultyBackend(poison="poison", after_steps=2)) as srv:
        yield srv


def _body(i: int, stream: bool) -> tuple[str, dict]:
    common = {"model": MODEL_NAME, "max_tokens": 10, "temperature": 0, "ignore_eos": True, "stream": stream,
              "return_token_ids": True}
    if i % 3 == 2:
        return CHAT, {**common, "messages": [{"role": "user", "content": f"neighbour {i}"}]}
    return C, {**common, "prompt": f"Neighbour number {i} says"}


async def _tokens(client: httpx.AsyncClient, path: str, body: dict, request_id: str | None = None):
    """(status, token ids, error object or None) of one request, streamed or not."""
    headers = {"X-Request-Id": request_id} if request_id else {}
    if not body["stream"]:
        r = await client.post(path, json=body, headers=headers)
        data = r.json()
        return r.status_code, (data["choices"][0]["token_ids"] if r.status_code == 200 else None), data.get("error")
    tokens, error = [], None
    async with client.stream("POST", path, json=body, headers=headers) as r:
        events = sse_events((await r.aread()).decode())
    assert events[-1] == "[DONE]"
    for event in events[:-1]:
        obj = json.loads(event)
        if "error" in obj:
            error = obj["error"]
        for choice in obj.get("choices", []):
            tokens += choice.get("token_ids") or []
    return r.status_code, tokens, error


def test_fault_injection_fails_only_the_chosen_request(faulty_server):
    neighbours = [_body(i, stream=i % 2 == 1) for i in range(6)]

    async def main():
        async with httpx.AsyncClient(base_url=faulty_server.url, timeout=120) as client:
            jobs = [_tokens(client, path, body) for path, body in neighbours]
            jobs.append(_tokens(client, *_body(10, stream=False), request_id="poison-plain"))
            jobs.append(_tokens(client, *_body(11, stream=True), request_id="poison-stream"))
            together = await asyncio.wait_for(asyncio.gather(*jobs), 120)
            alone = [await _tokens(client, path, body) for path, body in neighbours]
            return together, alone

    together, alone = asyncio.run(main())
    status, _, error = together[-2]
    assert status == 500 and error["type"] == "server_error"
    assert "cmpl-poison-plain" in error["message"] and "injected" not in error["message"]
    status, tokens, error = together[-1]
    assert status == 200 and 0 < len(tokens) < 10  # a few tokens, then the error event
    assert "cmpl-poison-stream" in error["message"]
    for (status, got, error), (_, want, _) in zip(together[:-2], alone):
        assert status == 200 and error is None
        assert got == want and len(got) == 10
    assert_idle(faulty_server.engine.engine)
    assert faulty_server.engine.is_alive()
    assert httpx.get(faulty_server.url + "/health").status_code == 200


# ---------------------------------------------------------------------------- liveness


def test_a_small_cache_never_blocks_the_queue():
    """Defect: a request that outgrew a cache smaller than max_model_len preempted itself and
    blocked the queue forever, while /health said 200."""
    settings = ServerSettings(served_model_names=[MODEL_NAME], log_stats=False)
    with running_server(settings, num_kv_blocks=16, block_size=16) as srv:
        engine = srv.engine.engine
        assert engine.max_model_len == 256  # fitted to the cache (the model allows 512)

        async def one(client: httpx.AsyncClient, i: int):
            prompt_len = [4, 40, 100, 180, 250, 300][i % 6]
            body = {"model": MODEL_NAME, "prompt": [5 + (i + k) % 50 for k in range(prompt_len)],
                    "ignore_eos": True, "max_tokens": None if i % 2 else 8 + 5 * i}
            r = await client.post(C, json=body)
            return r.status_code, r.json()

        async def main():
            async with httpx.AsyncClient(base_url=srv.url, timeout=180) as client:
                return await asyncio.wait_for(asyncio.gather(*(one(client, i) for i in range(20))), 180)

        results = asyncio.run(main())
        for status, body in results:
            if status == 400:
                assert body["error"]["code"] == "context_length_exceeded"
            else:
                assert status == 200 and body["choices"][0]["finish_reason"] == "length", body
        assert sum(status == 200 for status, _ in results) >= 14
        assert_idle(engine)


# ---------------------------------------------------------------------------- event loop


def test_a_slow_chat_template_does_not_stall_other_requests():
    """Defect: templates rendered on the event loop, so one request stalled all HTTP traffic."""
    settings = ServerSettings(served_model_names=[MODEL_NAME], log_stats=False, trust_request_chat_template=True)
    slow = "{% for i in range(250000) %}{% for j in range(400) %}{% endfor %}{% endfor %}{{ messages[0].content }}"
    with running_server(settings) as srv, httpx.Client(base_url=srv.url, timeout=120) as http:
        result = {}

        def render():
            result["status"] = http.post("/tokenize", json={"messages": [{"role": "user", "content": "x"}],
                                                            "chat_template": slow}).status_code

        thread = threading.Thread(target=render)
        thread.start()
        time.sleep(0.3)
        answered = 0
        with httpx.Client(base_url=srv.url, timeout=1.0) as quick:  # a stalled loop would time this out
            while thread.is_alive():
                assert quick.get("/health").status_code == 200
                answered += 1
                time.sleep(0.1)
        thread.join()
        assert result["status"] == 200
        assert answered >= 3  # the loop answered /health at least three times while the template rendered
