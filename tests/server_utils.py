"""Helpers for the server tests: a tiny model, and a real uvicorn server on a loopback port.

The server runs in a thread of the test process (fast to start, and the tests can look at
the engine), speaking real HTTP on 127.0.0.1 to the official `openai` client and to httpx.
"""
from __future__ import annotations

import atexit
import contextlib
import functools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

from octavo.testing.tiny_models import make_tiny_model

MODEL_NAME = "tiny-llama"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_server_model(path: str, bos: bool = True) -> str:
    """The tiny Llama, its tokenizer changed to add a BOS (`<|endoftext|>`, id 0) when
    add_special_tokens is on, so that flag has a visible effect."""
    make_tiny_model("llama", path)
    if bos:
        tok_path = os.path.join(path, "tokenizer.json")
        with open(tok_path, encoding="utf-8") as f:
            tok = json.load(f)
        template = {"type": "TemplateProcessing",
                    "single": [{"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}},
                               {"Sequence": {"id": "A", "type_id": 0}}],
                    "pair": [{"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}},
                             {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                    "special_tokens": {"<|endoftext|>": {"id": "<|endoftext|>", "ids": [0],
                                                         "tokens": ["<|endoftext|>"]}}}
        old = tok.get("post_processor")
        tok["post_processor"] = {"type": "Sequence", "processors": [old, template]} if old else template
        with open(tok_path, "w", encoding="utf-8") as f:
            json.dump(tok, f, ensure_ascii=False)
    return path


@functools.lru_cache(maxsize=1)
def server_model_path() -> str:
    """The BOS-adding tiny Llama, built once per test process."""
    path = tempfile.mkdtemp(prefix="octavo-server-model-")
    atexit.register(shutil.rmtree, path, True)
    return make_server_model(path)


# A Qwen3-style template that opens the think block in the generation prompt (as Qwen3
# *-Thinking-2507 and DeepSeek-R1 do), or closes an empty one with enable_thinking=False.
QWEN3_THINK_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if tools %}<|im_start|>system\ntools:{% for t in tools %} {{ t.function.name }}{% endfor %}<|im_end|>\n"
    "{% endif %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% else %}<think>\n"
    "{% endif %}{% endif %}")
THINK_TOKENS = ("<think>", "</think>", "<tool_call>", "</tool_call>")  # ids 1000-1003, as Qwen3's added tokens


@functools.lru_cache(maxsize=1)
def reasoning_model_path() -> str:
    """The tiny Qwen3 with Qwen3's added tokens (<think>, </think>, <tool_call>, </tool_call>) and
    QWEN3_THINK_TEMPLATE, built once per test process."""
    from transformers import AutoTokenizer

    path = tempfile.mkdtemp(prefix="octavo-reasoning-model-")
    atexit.register(shutil.rmtree, path, True)
    make_tiny_model("qwen3", path, vocab_size=1000 + len(THINK_TOKENS))
    tok = AutoTokenizer.from_pretrained(path)
    tok.add_tokens(list(THINK_TOKENS))
    tok.chat_template = QWEN3_THINK_TEMPLATE
    tok.save_pretrained(path)
    return path


class ThreadServer:
    """uvicorn serving `app` on 127.0.0.1:<free port> in a daemon thread."""

    def __init__(self, app, log_level: str = "warning"):
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level=log_level,
                                access_log=False, timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn-test", daemon=True)

    def __enter__(self) -> "ThreadServer":
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def start_engine(model_path: str, backend=None, **overrides):
    from octavo.config import EngineConfig
    from octavo.engine.async_engine import AsyncLLM

    kwargs = dict(model=model_path, dtype="float32", num_kv_blocks=256, num_threads=1)
    kwargs.update(overrides)
    return AsyncLLM(EngineConfig.from_kwargs(**kwargs), backend=backend)


@functools.cache
def shared_engine(model_path: str):
    """One engine per model for the whole test process: starting it is most of a server's start,
    and every server test leaves it idle (all requests ended, all blocks free)."""
    engine = start_engine(model_path)
    atexit.register(engine.shutdown)
    return engine


@contextlib.contextmanager
def running_server(settings, model_path: str | None = None, backend=None, **engine_overrides):
    """The real app over a tiny-model engine (the shared one; a fresh one on `backend` or with
    `engine_overrides`), on a loopback port; `.engine` and the app's `.state` are exposed."""
    from octavo.server.app import build_app

    model_path = model_path or server_model_path()
    fresh = backend is not None or engine_overrides
    engine = start_engine(model_path, backend, **engine_overrides) if fresh else shared_engine(model_path)
    try:
        app = build_app(engine, settings)
        with ThreadServer(app) as srv:
            srv.engine, srv.state = engine, app.state.octavo
            yield srv
    finally:
        if fresh:
            engine.shutdown()


@contextlib.contextmanager
def octavo_serve(args: list[str], port: int, env: dict | None = None, timeout: float = 120):
    """`octavo serve ARGS` as a real subprocess on a loopback port, yielded once healthy with its
    `url`; after the block it is stopped (if still running). `output()` returns what it printed
    (kept in a file: a pipe nobody reads would block a chatty server)."""
    import httpx

    cmd = [sys.executable, "-m", "octavo.cli", "serve", *args, "--host", "127.0.0.1", "--port", str(port)]
    log = tempfile.TemporaryFile("w+", encoding="utf-8")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    proc.output = lambda: (log.seek(0), log.read())[1]
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert proc.poll() is None, proc.output()
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, \
                f"octavo serve did not come up in {timeout:.0f} s:\n{proc.output()[-3000:]}"
            time.sleep(0.25)
        proc.url = url
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def check_chat(url: str, question: str = "What is the capital of France?", answer: str = "Paris") -> None:
    """Through the official openai client: `answer` in the greedy reply to `question`,
    non-streamed and streamed alike (a real model)."""
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)
    model = client.models.list().data[0].id
    messages = [{"role": "user", "content": question}]
    reply = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=24)
    assert answer in reply.choices[0].message.content
    stream = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=24,
                                            stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == reply.choices[0].message.content


def concurrently(fn, items) -> list:
    """fn(item) for every item at once, results in item order: the engine batches the requests,
    so seeds x requests cost about one request's time."""
    from concurrent.futures import ThreadPoolExecutor

    items = list(items)
    with ThreadPoolExecutor(max_workers=len(items)) as pool:
        return list(pool.map(fn, items))


def metric_value(text: str, name: str, labels: dict[str, str] | None = None) -> float | None:
    """One sample's value from a Prometheus text exposition (first match)."""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^([^\s{]+)(\{[^}]*\})?\s+(\S+)", line)
        if not m or m.group(1) != name:
            continue
        if labels:
            got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            if any(got.get(k) != v for k, v in labels.items()):
                continue
        return float(m.group(3))
    return None


def sse_events(body: str) -> list[str]:
    """The `data:` payloads of an SSE body, in order."""
    return [line[len("data: "):] for line in body.split("\n") if line.startswith("data: ")]


# The reasoning model's tests: token ids of </think> and <tool_call> (logit biases end the random
# model's reasoning and begin a call), and the request extra that switches thinking off.
REASONING_MODEL = "tiny-qwen3"
THINK_END, TOOL_CALL = 1001, 1002
NO_THINKING = {"chat_template_kwargs": {"enable_thinking": False}}


@contextlib.contextmanager
def tool_server(reasoning: bool = False):
    """A running server with the hermes tool parser: over the tiny Llama, or (reasoning) over the
    tiny Qwen3 with the qwen3 reasoning parser."""
    from octavo.server.reasoning_parsers import ReasoningParserManager
    from octavo.server.state import ServerSettings
    from octavo.server.tool_parsers import ToolParserManager

    hermes = ToolParserManager.get("hermes")
    if reasoning:
        settings = ServerSettings(served_model_names=[REASONING_MODEL], log_stats=False, tool_parser=hermes,
                                  reasoning_parser=ReasoningParserManager.get("qwen3"),
                                  trust_request_chat_template=True)
        model = reasoning_model_path()
    else:
        settings = ServerSettings(served_model_names=[MODEL_NAME], model_root=server_model_path(), log_stats=False,
                                  tool_parser=hermes, trust_request_chat_template=True)
        model = server_model_path()
    with running_server(settings, model) as srv:
        yield srv
