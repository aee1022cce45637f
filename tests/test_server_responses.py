"""POST /v1/responses (stateless) with the official `openai` client's `responses.create` and
`responses.stream`, on the tiny Qwen3 with a think-opening template (reasoning items) and the
hermes parser (function calls). The model is random: logit biases end its reasoning and begin
a call, strict tools and json_schema formats make what follows valid."""
from __future__ import annotations

import json

import jsonschema
import openai
import pytest
from server_utils import NO_THINKING, concurrently
from server_utils import REASONING_MODEL as MODEL
from server_utils import THINK_END as _THINK_END
from server_utils import TOOL_CALL as _TOOL_CALL

THINK_END, TOOL_CALL = str(_THINK_END), str(_TOOL_CALL)  # logit_bias keys
CITY = {"type": "object", "additionalProperties": False, "required": ["city"],
        "properties": {"city": {"type": "string", "maxLength": 8}}}
TOOL = {"type": "function", "name": "get_weather", "parameters": CITY, "strict": True}


@pytest.fixture(scope="module")
def server(reasoning_server):
    return reasoning_server


def create(client, **kw):
    body = dict(model=MODEL, input="Weather in Paris?", max_output_tokens=24)
    body.update(kw)
    return client.responses.create(**body)


def test_text_reasoning_and_usage(openai_client):
    r = create(openai_client, instructions="Be brief.", temperature=1.0, top_p=0.9,
               extra_body={"seed": 1, "logit_bias": {THINK_END: 4}})
    assert r.object == "response" and r.id.startswith("resp")
    assert r.status in ("completed", "incomplete")
    kinds = [item.type for item in r.output]
    assert kinds in (["reasoning", "message"], ["reasoning"], ["message"])
    if "message" in kinds:
        assert r.output_text == r.output[-1].content[0].text
    assert r.usage.output_tokens <= 24 and r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    if r.status == "incomplete":
        assert r.incomplete_details.reason == "max_output_tokens"


def test_message_items_and_function_call_outputs_as_input(openai_client):
    items = [{"role": "developer", "content": "Be brief."},
             {"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
             {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
             {"type": "function_call_output", "call_id": "call_1", "output": "18 C"}]
    r = create(openai_client, input=items, tools=[TOOL], extra_body=NO_THINKING)
    assert r.output and r.usage.input_tokens > 20


def test_strict_function_calls(openai_client):
    calls = 0
    outs = concurrently(lambda seed: create(openai_client, tools=[TOOL], max_output_tokens=100,
                                            extra_body={"seed": seed, "logit_bias": {TOOL_CALL: 5}, **NO_THINKING}),
                        range(4))
    for r in outs:
        for item in r.output:
            if item.type == "function_call":
                assert item.name == "get_weather" and item.call_id.startswith("call_")
                jsonschema.validate(json.loads(item.arguments), CITY)
                calls += 1
    assert calls >= 2


def test_named_tool_choice_and_json_schema_format(openai_client):
    r = create(openai_client, tools=[TOOL], tool_choice={"type": "function", "name": "get_weather"},
               max_output_tokens=60, extra_body={"seed": 0, **NO_THINKING})
    [call] = [item for item in r.output if item.type == "function_call"]
    jsonschema.validate(json.loads(call.arguments), CITY)
    fmt = {"format": {"type": "json_schema", "name": "city", "schema": CITY, "strict": True}}
    r = create(openai_client, text=fmt, max_output_tokens=100, extra_body={"seed": 0, **NO_THINKING})
    jsonschema.validate(json.loads(r.output_text), CITY)


def summary(item) -> tuple:
    """An output item without its ids (and without the SDK's `parsed` additions)."""
    if item.type == "function_call":
        return item.type, item.status, item.name, item.arguments
    return item.type, item.status, [(part.type, part.text) for part in item.content]


@pytest.mark.parametrize("seed", range(3))
def test_stream_matches_create(openai_client, seed):
    kw = dict(tools=[TOOL], max_output_tokens=80, extra_body={"seed": seed, "logit_bias": {THINK_END: 4, TOOL_CALL: 4}})
    whole = create(openai_client, **kw)
    types = []
    with openai_client.responses.stream(model=MODEL, input="Weather in Paris?", **kw) as stream:
        for event in stream:
            types.append(event.type)
        final = stream.get_final_response()
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed"
    assert types.count("response.output_item.added") == types.count("response.output_item.done") == len(final.output)
    assert [summary(item) for item in final.output] == [summary(item) for item in whole.output]
    assert final.output_text == whole.output_text and final.status == whole.status


def test_stream_sequence_numbers_and_text_events(openai_client):
    with openai_client.responses.stream(model=MODEL, input="Hi", max_output_tokens=12,
                                        extra_body={"seed": 0, **NO_THINKING}) as stream:
        events = list(stream)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    [done] = [e for e in events if e.type == "response.output_text.done"]
    assert deltas == done.text == events[-1].response.output_text


@pytest.mark.parametrize("kw, param", [
    (dict(previous_response_id="resp_1"), "previous_response_id"),
    (dict(store=True), "store"),
    (dict(tools=[{"type": "web_search"}]), "tools[0]"),
    (dict(input=[{"type": "image_generation_call"}]), "input[0]"),
    (dict(text={"format": {"type": "yaml"}}), "text.format"),
])
def test_clear_400s(openai_client, kw, param):
    with pytest.raises(openai.BadRequestError) as err:
        create(openai_client, **kw)
    assert err.value.body["param"] == param
