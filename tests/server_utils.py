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


@contextlib.contextmanager
def running_server(settings, backend=None, **engine_overrides):
    """The real app over a fresh tiny-model engine (on `backend`, else the one the device
    picks), on a loopback port; `.engine` is exposed."""
    from octavo.server.app import build_app

    engine = start_engine(server_model_path(), backend, **engine_overrides)
    try:
        with ThreadServer(build_app(engine, settings)) as srv:
            srv.engine = engine
            yield srv
    finally:
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
