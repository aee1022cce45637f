"""Bad input gets OpenAI-style errors (`{"error": {message, type, param, code}}`) with the right
status, before any stream starts, and the server keeps serving: a good request succeeds right
after each bad one. Also: API keys (401), CORS, and failures confined to one request."""
from __future__ import annotations

import json
import logging
import socket
import time

import httpx
import openai
import pytest
from server_utils import MODEL_NAME, ThreadServer, running_server, sse_events

from octavo.server.app import build_app
from octavo.server.state import ServerSettings

C, CHAT = "/v1/completions", "/v1/chat/completions"
MSG = [{"role": "user", "content": "hi"}]
LONG = "token " * 600  # > max_model_len (512)


def _c(**kw):
    return {"model": MODEL_NAME, "prompt": "Hello", "max_tokens": 4, **kw}


def _chat(**kw):
    return {"model": MODEL_NAME, "messages": MSG, "max_completion_tokens": 4, **kw}


# (id, path, body (dict, or bytes sent as is), status, expected param or ..., expected code or ...)
BAD = [
    ("json-malformed", C, b'{"prompt": "x",', 400, None, "invalid_json"),
    ("json-array", C, b"[1, 2]", 400, None, ...),
    ("json-empty", C, b"", 400, None, ...),
    ("prompt-missing", C, {"model": MODEL_NAME}, 400, "prompt", ...),
    ("prompt-type", C, _c(prompt=5), 400, ..., ...),
    ("prompt-empty-list", C, _c(prompt=[]), 400, "prompt", ...),
    ("prompt-empty-string", C, _c(prompt="", add_special_tokens=False), 400, "prompt", ...),
    ("prompt-token-out-of-vocab", C, _c(prompt=[5, 99999]), 400, "prompt", ...),
    ("prompt-token-negative", C, _c(prompt=[[-1, 5]]), 400, "prompt", ...),
    ("prompt-too-long", C, _c(prompt=LONG), 400, "prompt", "context_length_exceeded"),
    ("max-tokens-beyond-context", C, _c(max_tokens=600), 400, "max_tokens", "context_length_exceeded"),
    ("max-tokens-zero", C, _c(max_tokens=0), 400, "max_tokens", ...),
    ("max-tokens-negative", C, _c(max_tokens=-3), 400, "max_tokens", ...),
    ("max-tokens-string", C, _c(max_tokens="many"), 400, "max_tokens", ...),
    ("temperature-negative", C, _c(temperature=-0.5), 400, "temperature", ...),
    ("temperature-string", C, _c(temperature="hot"), 400, "temperature", ...),
    ("top-p-zero", C, _c(top_p=0), 400, "top_p", ...),
    ("top-p-above-one", C, _c(top_p=1.5), 400, "top_p", ...),
    ("top-k-negative", C, _c(top_k=-2), 400, "top_k", ...),
    ("min-p-above-one", C, _c(min_p=2.0), 400, "min_p", ...),
    ("presence-penalty-range", C, _c(presence_penalty=3.0), 400, "presence_penalty", ...),
    ("frequency-penalty-range", C, _c(frequency_penalty=-2.5), 400, "frequency_penalty", ...),
    ("repetition-penalty-zero", C, _c(repetition_penalty=0), 400, "repetition_penalty", ...),
    ("n-zero", C, _c(n=0), 400, "n", ...),
    ("n-huge", C, _c(n=100000), 400, "n", ...),
    ("best-of-below-n", C, _c(n=3, best_of=2), 400, "best_of", ...),
    ("best-of-stream", C, _c(n=1, best_of=2, stream=True), 400, "best_of", ...),
    ("logprobs-above-max", C, _c(logprobs=50), 400, "logprobs", ...),
    ("logprobs-negative", C, _c(logprobs=-1), 400, "logprobs", ...),
    ("prompt-logprobs-above-max", C, _c(prompt_logprobs=50), 400, "prompt_logprobs", ...),
    ("prompt-logprobs-stream", C, _c(prompt_logprobs=1, stream=True), 400, "prompt_logprobs", ...),
    ("logit-bias-key", C, _c(logit_bias={"abc": 1}), 400, "logit_bias", ...),
    ("logit-bias-value", C, _c(logit_bias={"5": 500}), 400, "logit_bias", ...),
    ("logit-bias-out-of-vocab", C, _c(logit_bias={"99999": 1}), 400, "logit_bias", ...),
    ("stop-empty-string", C, _c(stop=[""]), 400, "stop", ...),
    ("stop-token-ids-out-of-vocab", C, _c(stop_token_ids=[99999]), 400, "stop_token_ids", ...),
    ("allowed-token-ids-empty", C, _c(allowed_token_ids=[]), 400, "allowed_token_ids", ...),
    ("allowed-token-ids-out-of-vocab", C, _c(allowed_token_ids=[99999]), 400, "allowed_token_ids", ...),
    ("min-tokens-above-max", C, _c(min_tokens=10), 400, "min_tokens", ...),
    ("seed-too-large", C, _c(seed=2**70), 400, "seed", ...),
    ("truncate-zero", C, _c(truncate_prompt_tokens=0), 400, "truncate_prompt_tokens", ...),
    ("truncate-beyond-context", C, _c(truncate_prompt_tokens=10000), 400, "truncate_prompt_tokens", ...),
    ("suffix", C, _c(suffix="tail"), 400, "suffix", ...),
    ("stream-options-without-stream", C, _c(stream_options={"include_usage": True}), 400, "stream_options", ...),
    ("unknown-model", C, _c(model="gpt-9"), 404, "model", "model_not_found"),
    ("stream-invalid", C, _c(temperature=-1, stream=True), 400, "temperature", ...),
    ("stream-too-long", C, _c(prompt=LONG, stream=True), 400, "prompt", "context_length_exceeded"),
    ("prompt-lone-surrogate", C, b'{"prompt": "bad \\ud800 text"}', 400, "prompt", ...),
    ("chat-lone-surrogate", CHAT, b'{"messages": [{"role": "user", "content": "\\udfff"}]}', 400,
     "messages.0.content", ...),
    ("model-lone-surrogate", C, b'{"model": "\\ud800", "prompt": "x"}', 400, "model", ...),
    ("stop-lone-surrogate", C, b'{"prompt": "x", "stop": ["ok", "\\udc00"]}', 400, "stop.1", ...),
    ("guided-choice-lone-surrogate", C, b'{"prompt": "x", "guided_choice": ["\\ud83d"]}', 400, "guided_choice.0", ...),
    ("unknown-field-lone-surrogate", CHAT, b'{"messages": [{"role": "user", "content": "x"}], "extra": {"k": "\\ud800"}}',
     400, "extra.k", ...),
    ("temperature-infinity", C, b'{"prompt": "x", "temperature": Infinity}', 400, "temperature", ...),
    ("temperature-1e400", C, b'{"prompt": "x", "temperature": 1e400}', 400, "temperature", ...),
    ("temperature-nan", C, b'{"prompt": "x", "temperature": NaN}', 400, "temperature", ...),
    ("repetition-penalty-infinite", C, b'{"prompt": "x", "repetition_penalty": 1e400}', 400, "repetition_penalty", ...),
    ("presence-penalty-infinite", CHAT, b'{"messages": [{"role": "user", "content": "x"}], "presence_penalty": -1e400}',
     400, "presence_penalty", ...),
    ("top-k-int64-overflow", C, _c(top_k=2**63), 400, "top_k", ...),
    ("top-k-above-vocab", C, _c(top_k=10**6), 400, "top_k", ...),
    ("seed-negative-overflow", C, _c(seed=-(2**63) - 1), 400, "seed", ...),
    ("n-string", C, _c(n="2"), 400, "n", ...),
    ("stream-string", C, _c(stream="yes"), 400, "stream", ...),
    ("temperature-numeric-string", C, _c(temperature="0.5"), 400, "temperature", ...),
    ("chat-logprobs-int", CHAT, _chat(logprobs=1), 400, "logprobs", ...),
    ("best-of-huge", C, _c(best_of=10**6), 400, "best_of", ...),
    ("too-many-prompts", C, _c(prompt=["x"] * 257), 400, "prompt", ...),
    ("chat-text-part-without-text", CHAT, _chat(messages=[{"role": "user", "content": [{"type": "text"}]}]), 400,
     "messages[0].content", ...),
    ("chat-messages-not-a-list", CHAT, _chat(messages="hello"), 400, "messages", ...),
    ("chat-messages-missing", CHAT, {"model": MODEL_NAME}, 400, "messages", ...),
    ("chat-messages-empty", CHAT, _chat(messages=[]), 400, "messages", ...),
    ("chat-role-unknown", CHAT, _chat(messages=[{"role": "robot", "content": "x"}]), 400, ..., ...),
    ("chat-content-image", CHAT, _chat(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:,"}}]}]), 400, ..., ...),
    ("chat-top-logprobs-without-logprobs", CHAT, _chat(top_logprobs=2), 400, "top_logprobs", ...),
    ("chat-top-logprobs-above-max", CHAT, _chat(logprobs=True, top_logprobs=50), 400, "logprobs", ...),
    ("chat-response-format-type", CHAT, _chat(response_format={"type": "xml"}), 400, "response_format", ...),
    ("chat-response-format-no-schema", CHAT, _chat(response_format={"type": "json_schema"}), 400,
     "response_format", ...),
    ("chat-response-format-bad-schema", CHAT, _chat(response_format={
        "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objekt"}}}), 400, "response_format", ...),
    ("guided-two-constraints", C, _c(guided_regex="a", guided_choice=["a"]), 400, "guided_choice", ...),
    ("guided-bad-regex", C, _c(guided_regex="[a-"), 400, "guided_regex", ...),
    ("guided-bad-backend", C, _c(guided_regex="a", guided_decoding_backend="outlines"), 400,
     "guided_decoding_backend", ...),
    ("chat-gen-prompt-and-continue", CHAT, _chat(continue_final_message=True), 400, "continue_final_message", ...),
    ("chat-template-untrusted", CHAT, _chat(chat_template="{{ messages }}"), 400, "chat_template", ...),
    ("tokenize-chat-template-untrusted", "/tokenize", {"messages": MSG, "chat_template": "{{ messages }}"}, 400,
     "chat_template", ...),
    ("chat-template-kwargs-reserved", CHAT, _chat(chat_template_kwargs={"tokenize": True}), 400,
     "chat_template_kwargs", ...),
    ("chat-max-completion-tokens-zero", CHAT, _chat(max_completion_tokens=0), 400, "max_completion_tokens", ...),
    ("chat-max-completion-tokens-beyond", CHAT, _chat(max_completion_tokens=600), 400, "max_completion_tokens",
     "context_length_exceeded"),
    ("chat-too-long", CHAT, _chat(messages=[{"role": "user", "content": LONG}]), 400, "messages",
     "context_length_exceeded"),
    ("chat-tool-choice-required", CHAT, _chat(tool_choice="required"), 400, "tool_choice", ...),
    ("chat-unknown-model", CHAT, _chat(model="nope"), 404, "model", "model_not_found"),
    ("chat-stream-invalid", CHAT, _chat(top_p=0, stream=True), 400, "top_p", ...),
    ("tokenize-bad", "/tokenize", {"prompt": 5}, 400, ..., ...),
    ("detokenize-out-of-vocab", "/detokenize", {"tokens": [1, 99999]}, 400, "tokens", ...),
]


@pytest.fixture(scope="module")
def server():
    settings = ServerSettings(served_model_names=[MODEL_NAME], log_stats=False,
                              allowed_origins=["http://ok.example"])
    with running_server(settings) as srv:
        yield srv


def assert_error(r: httpx.Response, status: int, param=..., code=...) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")  # also for stream=True
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    assert err["type"] == ("invalid_request_error" if status in (400, 404) else err["type"])
    if param is not ...:
        assert err["param"] == param, err
    if code is not ...:
        assert err["code"] == code, err
    return err


def good_request(http) -> None:
    r = http.post(C, json=_c(max_tokens=2, temperature=0))
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 2


def test_at_least_25_cases():
    assert len(BAD) >= 25


@pytest.mark.parametrize("name,path,body,status,param,code", BAD, ids=[b[0] for b in BAD])
def test_bad_request(http, name, path, body, status, param, code):
    if isinstance(body, bytes):
        r = http.post(path, content=body, headers={"Content-Type": "application/json"})
    else:
        r = http.post(path, json=body)
    assert_error(r, status, param, code)
    good_request(http)


def test_openai_client_sees_error_objects(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL_NAME, prompt="hi", temperature=-1)
    assert e.value.status_code == 400 and e.value.body["param"] == "temperature"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=MSG)
    with pytest.raises(openai.BadRequestError):  # streaming: fails before the stream
        client.chat.completions.create(model=MODEL_NAME, messages=[], stream=True)


def test_unknown_routes_and_methods(http):
    assert_error(http.get("/v1/nothing"), 404)
    assert_error(http.get(C), 405)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                                          None])
def test_only_json_bodies_run(server, http, content_type):
    """Defect: text/plain bodies were parsed as JSON, so a cross-site form post (which a
    browser sends without a CORS preflight) ran generation."""
    generated = server.engine.engine.stats().generation_tokens
    headers = {"Content-Type": content_type} if content_type else {}
    r = http.post(C, content=json.dumps(_c(max_tokens=2)).encode(), headers=headers)
    assert_error(r, 415, code="unsupported_media_type")
    assert server.engine.engine.stats().generation_tokens == generated


def test_json_with_charset_runs(http):
    r = http.post(C, content=json.dumps(_c(max_tokens=2)).encode(),
                  headers={"Content-Type": "application/json; charset=utf-8"})
    assert r.status_code == 200, r.text


def test_request_body_limit(server):
    settings = ServerSettings(served_model_names=[MODEL_NAME], log_stats=False, max_request_body_bytes=1024)
    with ThreadServer(build_app(server.engine, settings)) as srv, httpx.Client(base_url=srv.url, timeout=60) as h:
        assert_error(h.post(C, json=_c(prompt="x" * 2000)), 413, code="request_too_large")

        def chunks():  # no Content-Length: the limit holds on the bytes that arrive
            for _ in range(8):
                yield b" " * 256
            yield json.dumps(_c()).encode()

        assert_error(h.post(C, content=chunks(), headers={"Content-Type": "application/json"}), 413)
        assert h.post(C, json=_c(max_tokens=2)).status_code == 200


def test_client_request_id(http):
    r = http.post(C, json=_c(max_tokens=2), headers={"X-Request-Id": "client-42"})
    assert r.status_code == 200 and r.json()["id"] == "cmpl-client-42"
    assert_error(http.post(C, json=_c(), headers={"X-Request-Id": "bad id"}), 400, "x-request-id")


def test_cors(http):
    pre = http.options(C, headers={"Origin": "http://ok.example", "Access-Control-Request-Method": "POST"})
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "http://ok.example"
    bad = http.options(C, headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in bad.headers


def test_api_key(server):
    """Defect: /tokenize and /detokenize (which render templates and tokenize) were open."""
    settings = ServerSettings(served_model_names=[MODEL_NAME], api_key="sekret", log_stats=False)
    with ThreadServer(build_app(server.engine, settings)) as srv, httpx.Client(base_url=srv.url, timeout=60) as h:
        assert_error(h.post(C, json=_c()), 401, code="invalid_api_key")
        assert_error(h.post(C, json=_c(), headers={"Authorization": "Bearer wrong"}), 401)
        assert_error(h.get("/v1/models"), 401)
        for path, body in (("/tokenize", {"prompt": "x"}), ("/detokenize", {"tokens": [1]})):
            assert_error(h.post(path, json=body), 401)
        for path in ("/version", "/metrics", "/openapi.json", "/docs", "/nothing"):
            assert_error(h.get(path), 401)
        assert h.get("/health").status_code == 200  # for the supervisor's probe
        keyed = {"Authorization": "Bearer sekret"}
        assert h.post("/tokenize", json={"prompt": "x"}, headers=keyed).status_code == 200
        assert h.get("/metrics", headers=keyed).status_code == 200
        ok = openai.OpenAI(base_url=srv.url + "/v1", api_key="sekret", max_retries=0)
        assert ok.completions.create(model=MODEL_NAME, prompt="hi", max_tokens=2).usage.completion_tokens == 2
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=srv.url + "/v1", api_key="nope", max_retries=0).models.list()
    settings.metrics_without_api_key = True
    with ThreadServer(build_app(server.engine, settings)) as srv, httpx.Client(base_url=srv.url, timeout=60) as h:
        assert h.get("/metrics").status_code == 200
        assert_error(h.post("/tokenize", json={"prompt": "x"}), 401)


def test_a_failure_in_one_request_fails_only_that_request(http, monkeypatch, caplog):
    """A bug while serving one request is that request's 500: the body names a request id,
    never the exception; the log has the exception under that id."""
    from octavo.server import serving_completion

    def broken(self, token_ids, positions):
        raise RuntimeError("boom: internal detail")

    caplog.set_level(logging.ERROR, logger="octavo.server")
    with monkeypatch.context() as m:
        m.setattr(serving_completion.CompletionLogprobs, "add", broken)
        r = http.post(C, json=_c(logprobs=1), headers={"X-Request-Id": "bug-1"})
        err = assert_error(r, 500)
        assert err["type"] == "server_error" and "boom" not in err["message"] and "cmpl-bug-1" in err["message"]
        assert r.headers["x-request-id"] == "cmpl-bug-1"
        assert any("cmpl-bug-1" in rec.getMessage() and "boom" in rec.getMessage() for rec in caplog.records)
        with http.stream("POST", C, json=_c(logprobs=1, stream=True), headers={"X-Request-Id": "bug-2"}) as r:
            assert r.status_code == 200
            events = sse_events(r.read().decode())
        error = json.loads(events[-2])["error"]
        assert events[-1] == "[DONE]" and "cmpl-bug-2" in error["message"] and "boom" not in error["message"]
        good_request(http)
    assert http.post(C, json=_c(logprobs=1)).status_code == 200


def test_best_of_client_gone_at_once_leaves_the_engine_up(server, http):
    """Defect: closing the socket right after sending a best_of request made the abort path
    raise in the engine loop, which stopped for good (every later request 500, /health 503)."""
    body = json.dumps(_c(prompt="hello", max_tokens=8, best_of=2)).encode()
    host, port = server.url.removeprefix("http://").split(":")
    for _ in range(3):
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    engine = server.engine.engine
    deadline = time.monotonic() + 30
    while engine.has_unfinished_requests() or engine.outputs.parents:
        assert time.monotonic() < deadline, "the aborted requests never left the engine"
        time.sleep(0.05)
    assert http.get("/health").status_code == 200
    good_request(http)
    assert engine.kv.num_free_blocks == engine.kv.num_blocks


def test_a_request_chat_template_runs_only_when_trusted(server):
    settings = ServerSettings(served_model_names=[MODEL_NAME], log_stats=False, trust_request_chat_template=True)
    with ThreadServer(build_app(server.engine, settings)) as srv, httpx.Client(base_url=srv.url, timeout=60) as h:
        template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
        r = h.post("/tokenize", json={"messages": MSG, "chat_template": template, "add_generation_prompt": False})
        assert r.status_code == 200, r.text
        want = h.post("/tokenize", json={"prompt": "<user>hi", "add_special_tokens": False}).json()["tokens"]
        assert r.json()["tokens"] == want
        assert_error(h.post(CHAT, json=_chat(chat_template="{% for m in messages %}")), 400, "messages")
        assert h.post(CHAT, json=_chat(chat_template=template)).status_code == 200
