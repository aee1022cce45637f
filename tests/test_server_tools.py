"""Tool calling on /v1/chat/completions, over real HTTP with the official `openai` client.

The tiny random model writes garbage, which is the point for named and required choices:
only guided decoding can make its calls valid. For tool_choice "auto" a guided regex makes
it write a hermes-format call, so the server's parsing and delta shapes are tested without a
real model (tests/test_real_models.py asks Qwen2.5-Coder for a real call).
"""
from __future__ import annotations

import json
import re

import jsonschema
import openai
import pytest
from server_utils import MODEL_NAME, concurrently

from octavo.server.errors import APIError
from octavo.server.tool_calls import plan_tools

WEATHER = {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
           "properties": {"city": {"type": "string", "maxLength": 12},
                          "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}}
TIME = {"type": "object", "additionalProperties": False, "required": ["zone"],
        "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]},
                       "hours": {"type": "integer", "minimum": 0, "maximum": 23}}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "description": "the time", "parameters": TIME}}]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
MESSAGES = [{"role": "user", "content": "What's the weather in Paris?"}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}
HERMES_CALL = ('Let me check. <tool_call>{"name": "get_weather", "arguments": {"city": "Paris", '
               '"unit": "celsius"}}</tool_call>')
HERMES_REGEX = re.sub(r"([{}.])", r"\\\1", HERMES_CALL)  # exactly the call: braces and the dot escaped


@pytest.fixture(scope="module")
def server(hermes_server):
    return hermes_server


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def chat(client, **kw):
    body = dict(model=MODEL_NAME, messages=MESSAGES, tools=TOOLS, max_tokens=300, temperature=1.0)
    body.update(kw)
    return client.chat.completions.create(**body)


def streamed(client, **kw) -> tuple[str | None, list[dict], str, list]:
    """(content, calls, finish_reason, deltas) assembled from a stream."""
    content, calls, finish, deltas = None, {}, None, []
    for chunk in chat(client, stream=True, **kw):
        for choice in chunk.choices:
            delta = choice.delta
            if delta.content:
                content = (content or "") + delta.content
            for call in delta.tool_calls or []:
                deltas.append(call)
                entry = calls.setdefault(call.index, {"id": call.id, "name": call.function.name, "arguments": ""})
                entry["arguments"] += call.function.arguments or ""
            finish = choice.finish_reason or finish
    return content, [calls[i] for i in sorted(calls)], finish, deltas


def as_dicts(message) -> list[dict]:
    return [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments} for c in message.tool_calls or []]


def test_named_tool_choice_arguments_validate(client):
    for out in concurrently(lambda seed: chat(client, tool_choice=NAMED, seed=seed), range(20)):
        choice = out.choices[0]
        assert choice.finish_reason == "stop"
        assert choice.message.content is None
        [call] = choice.message.tool_calls
        assert call.type == "function" and call.function.name == "get_weather"
        assert call.id.startswith("call_") and len(call.id) == len("call_") + 24
        jsonschema.validate(json.loads(call.function.arguments), WEATHER)


@pytest.mark.parametrize("seed", range(3))
def test_named_tool_choice_streams_the_same_call(client, seed):
    whole, (content, calls, finish, deltas) = concurrently(
        lambda stream: streamed(client, tool_choice=NAMED, seed=seed) if stream else
        chat(client, tool_choice=NAMED, seed=seed).choices[0], (False, True))
    assert finish == "stop" and content is None
    assert [c["name"] for c in calls] == ["get_weather"]
    assert calls[0]["arguments"] == whole.message.tool_calls[0].function.arguments
    first, *later = deltas
    assert first.id.startswith("call_") and first.type == "function" and first.function.name == "get_weather"
    assert first.function.arguments == "" and len(later) > 1, "arguments should stream in fragments"
    assert all(d.id is None and d.function.name is None for d in later)


def test_required_tool_choice_calls_validate(client):
    for out in concurrently(lambda seed: chat(client, tool_choice="required", seed=seed, max_tokens=400), range(10)):
        choice = out.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.tool_calls, "required means at least one call"
        for call in choice.message.tool_calls:
            jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
        ids = [c.id for c in choice.message.tool_calls]
        assert len(set(ids)) == len(ids)


def test_required_streams_the_same_calls(client):
    whole = chat(client, tool_choice="required", seed=5, max_tokens=400).choices[0]
    content, calls, finish, _ = streamed(client, tool_choice="required", seed=5, max_tokens=400)
    assert finish == "tool_calls" and content is None
    assert [(c["name"], c["arguments"]) for c in calls] == \
        [(c.function.name, c.function.arguments) for c in whole.message.tool_calls]


def test_parallel_tool_calls_false_gives_one_call(client):
    outs = concurrently(lambda seed: chat(client, tool_choice="required", parallel_tool_calls=False, seed=seed,
                                          max_tokens=400), range(5))
    assert [len(out.choices[0].message.tool_calls) for out in outs] == [1] * 5


def test_auto_parses_the_models_call(client):
    regex = {"guided_regex": HERMES_REGEX}
    out = chat(client, tool_choice="auto", extra_body=regex, seed=0).choices[0]
    assert out.finish_reason == "tool_calls"
    assert out.message.content == "Let me check."
    [call] = out.message.tool_calls
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris", "unit": "celsius"}
    content, calls, finish, deltas = streamed(client, tool_choice="auto", extra_body=regex, seed=0)
    assert (content, finish) == ("Let me check.", "tool_calls")
    assert [(c["name"], c["arguments"]) for c in calls] == [("get_weather", call.function.arguments)]
    first, *later = deltas
    assert first.id.startswith("call_") and first.type == "function" and first.function.arguments == ""
    assert later and all(d.id is None and d.function.name is None for d in later)


def test_auto_without_a_call_is_content(client):
    out = chat(client, extra_body={"guided_regex": "Paris is sunny"}, seed=0).choices[0]
    assert out.finish_reason == "stop" and out.message.content == "Paris is sunny"
    assert not out.message.tool_calls


def test_none_ignores_tools(client):
    out = chat(client, tool_choice="none", extra_body={"guided_regex": HERMES_REGEX}, seed=0).choices[0]
    assert out.message.content == HERMES_CALL and not out.message.tool_calls and out.finish_reason == "stop"


@pytest.mark.parametrize("kw, param", [
    (dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "objekt"}}}]),
     "tools[0].function.parameters"),
    (dict(tools=[TOOLS[0], TOOLS[0]]), "tools[1].function.name"),
    (dict(tools=[{"type": "function", "function": {"name": "bad name!"}}]), "tools[0].function.name"),
    (dict(tools=[{"type": "retrieval"}]), "tools[0]"),
    (dict(tool_choice={"type": "function", "function": {"name": "nope"}}), "tool_choice"),
    (dict(tools=None, tool_choice="required"), "tool_choice"),
    (dict(tools=None, tool_choice=NAMED), "tool_choice"),
    (dict(tool_choice="sometimes"), "tool_choice"),
    (dict(tool_choice="required", response_format={"type": "json_object"}), "tool_choice"),
])
def test_bad_tools_get_400(client, kw, param):
    body = dict(kw)
    if body.get("tools", TOOLS) is None:
        body.pop("tools")
        body["tools"] = openai.NOT_GIVEN
    with pytest.raises(openai.BadRequestError) as err:
        chat(client, **body)
    assert err.value.body["param"] == param
    assert chat(client, tool_choice=NAMED, seed=1).choices[0].message.tool_calls  # still serving


def test_auto_needs_a_parser():
    with pytest.raises(APIError, match="--enable-auto-tool-choice"):
        plan_tools(TOOLS, "auto", None, None)
    assert plan_tools(TOOLS, None, None, None).choice == "none"  # the default falls back to none


TOOL_TEMPLATE = ("{% for m in messages %}{{ m.role }}:{{ m.content }}"
                 "{% for c in m.tool_calls or [] %}[call {{ c.id }} {{ c.function.name }} "
                 "city={{ c.function.arguments.city }}]{% endfor %}"
                 "{% if m.tool_call_id %}[result of {{ m.tool_call_id }}]{% endif %}\n{% endfor %}"
                 "{% for t in tools or [] %}tool {{ t.function.name }}\n{% endfor %}")


def test_multi_turn_tool_messages_render(server, http):
    messages = MESSAGES + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees"}]
    tokens = http.post("/tokenize", json={"model": MODEL_NAME, "messages": messages, "tools": TOOLS,
                                          "chat_template": TOOL_TEMPLATE, "add_generation_prompt": False})
    assert tokens.status_code == 200, tokens.text
    text = http.post("/detokenize", json={"model": MODEL_NAME, "tokens": tokens.json()["tokens"]}).json()["prompt"]
    assert "[call call_1 get_weather city=Paris]" in text
    assert "tool:18 degrees[result of call_1]" in text
    assert "tool get_time" in text
    out = http.post("/v1/chat/completions", json={"model": MODEL_NAME, "messages": messages, "tools": TOOLS,
                                                  "chat_template": TOOL_TEMPLATE, "max_tokens": 5})
    assert out.status_code == 200, out.text
