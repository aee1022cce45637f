"""Tool calling end to end with the real Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF from PyPI):
`octavo serve --enable-auto-tool-choice --tool-call-parser qwen2_5` as a subprocess, asked by
the official `openai` client. The model answers a tool request with either <tool_call> tags or
a ```json fence; the qwen2_5 parser takes both."""
import json

import openai
import pytest
from server_utils import free_port, octavo_serve

from octavo.testing.real_models import qwen_coder_gguf

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "the city"}},
                   "required": ["city"]}}}]
QUESTION = [{"role": "user", "content": "What's the weather in Paris?"}]


@pytest.fixture(scope="module")
def qwen_server():
    try:
        path = qwen_coder_gguf()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    args = [path, "--served-model-name", "qwen", "--max-model-len", "2048", "--disable-log-stats",
            "--enable-auto-tool-choice", "--tool-call-parser", "qwen2_5"]
    with octavo_serve(args, free_port(), timeout=300) as proc:
        yield openai.OpenAI(base_url=proc.url + "/v1", api_key="none", max_retries=0, timeout=300)


def ask(client, **kw):
    return client.chat.completions.create(model="qwen", messages=QUESTION, tools=TOOLS, tool_choice="auto",
                                          temperature=0, max_tokens=100, **kw)


def test_auto_tool_call_names_paris(qwen_server):
    choice = ask(qwen_server).choices[0]
    assert choice.finish_reason == "tool_calls", choice.message
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather" and call.id.startswith("call_")
    assert "Paris" in json.loads(call.function.arguments)["city"]


def test_auto_tool_call_streamed(qwen_server):
    calls, finish = {}, None
    for chunk in ask(qwen_server, stream=True):
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                entry = calls.setdefault(call.index, {"name": call.function.name, "arguments": ""})
                entry["arguments"] += call.function.arguments or ""
            finish = choice.finish_reason or finish
    assert finish == "tool_calls"
    assert [c["name"] for c in calls.values()] == ["get_weather"]
    assert "Paris" in json.loads(calls[0]["arguments"])["city"]
