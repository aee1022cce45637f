"""The streamed tool-call shape through LlamaIndex's OpenAI-compatible client and the openai 2.x
SDK's stream helper, which failed on chunks holding two entries of one index (LlamaIndex read
`get_weather({})`, the helper 'Invalid JSON: EOF'). Both pin openai<3, so they run in the
`.venv-clients` environment scripts/setup.sh --test builds, against a server in this process."""
from __future__ import annotations

import atexit
import functools
import json
import os
import re
import subprocess

import pytest
from server_utils import MODEL_NAME

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = os.path.join(ROOT, ".venv-clients", "bin", "python")
CALL = '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}'


@functools.cache
def start_clients() -> subprocess.Popen | None:
    """The client process, importing its libraries (~10 s) while other tests run: conftest starts
    it once this module is collected. None without the environment."""
    if not os.path.exists(PYTHON):
        return None
    proc = subprocess.Popen([PYTHON, os.path.join(ROOT, "tests", "clients", "openai2_clients.py")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    atexit.register(proc.kill)
    return proc


@pytest.fixture(scope="module")
def server(hermes_server):
    return hermes_server


def test_llamaindex_and_openai2_stream_helpers(server):
    proc = start_clients()
    if proc is None:
        if os.environ.get("CI"):
            pytest.fail("the .venv-clients environment is missing: scripts/setup.sh --test builds it")
        pytest.skip("no .venv-clients (scripts/setup.sh --test builds it)")
    regex = re.sub(r"([{}.])", r"\\\1", f"Checking. <tool_call>{CALL}</tool_call>")
    stdout, stderr = proc.communicate(f"{server.url}\t{MODEL_NAME}\t{regex}\n", timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["openai"].startswith("2.")
    want = [["get_weather", {"city": "Paris", "unit": "celsius"}]]
    assert result["llamaindex"] == want and result["openai_stream"] == want
