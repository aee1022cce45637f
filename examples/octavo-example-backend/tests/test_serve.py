"""`octavo serve --device example` answers the official openai client, streaming and not.

Runs in the clean environment `scripts/test_example_backend.sh` builds: octavo and this package
installed from the repository, nothing else of the repository's test tooling.
"""
from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request

import openai
import pytest

from octavo.testing.tiny_models import make_tiny_model


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model = make_tiny_model("llama", str(tmp_path_factory.mktemp("llama")))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "octavo.cli", "serve", model, "--device", "example", "--dtype", "float32",
           "--host", "127.0.0.1", "--port", str(port), "--served-model-name", "tiny", "--example-kv-blocks", "128"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                with urllib.request.urlopen(url + "/health", timeout=2):
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "octavo serve did not come up"
            time.sleep(0.25)
        yield openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_completion(server):
    out = server.completions.create(model="tiny", prompt="The cache", max_tokens=8, temperature=0.0,
                                    extra_body={"ignore_eos": True})
    assert out.usage.completion_tokens == 8 and out.choices[0].finish_reason == "length"


def test_streamed_chat(server):
    stream = server.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}],
                                            max_tokens=6, temperature=0.0, stream=True,
                                            extra_body={"ignore_eos": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason == "length" and text
    again = server.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}],
                                           max_tokens=6, temperature=0.0, extra_body={"ignore_eos": True})
    assert again.choices[0].message.content == text
