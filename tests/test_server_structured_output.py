"""Structured output over real HTTP with the official `openai` client: response_format on
chat (and completions), vLLM's guided_* extras on both endpoints, streamed and not, and 400s
for bad constraints that leave the server serving. The tiny model is random, so every valid
output is the grammar's doing."""
from __future__ import annotations

import json
import re

import jsonschema
import openai
import pytest
from server_utils import MODEL_NAME, concurrently


SCHEMA = {"type": "object", "additionalProperties": False, "required": ["city", "days", "rain"],
          "properties": {"city": {"type": "string", "maxLength": 10},
                         "days": {"type": "array", "items": {"enum": ["mon", "tue", "wed"]}, "maxItems": 3},
                         "rain": {"type": "boolean"}}}
JSON_SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "forecast", "schema": SCHEMA, "strict": True}}
MESSAGES = [{"role": "user", "content": "Weather for the week?"}]


@pytest.fixture(scope="module")
def server(hermes_server):
    return hermes_server  # no tools here: the tool parser never acts


def chat(client, **kw):
    body = dict(model=MODEL_NAME, messages=MESSAGES, max_completion_tokens=400, temperature=1.0)
    body.update(kw)
    return client.chat.completions.create(**body)


def complete(client, **kw):
    body = dict(model=MODEL_NAME, prompt="The answer:", max_tokens=100, temperature=1.0)
    body.update(kw)
    return client.completions.create(**body)


def test_chat_json_schema(openai_client):
    for out in concurrently(lambda seed: chat(openai_client, response_format=JSON_SCHEMA_FORMAT, seed=seed), range(3)):
        assert out.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(out.choices[0].message.content), SCHEMA)


def test_chat_json_schema_streamed(openai_client):
    streams = concurrently(lambda seed: list(chat(openai_client, response_format=JSON_SCHEMA_FORMAT, seed=seed,
                                                  stream=True)), range(3))
    for chunks in streams:
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
        jsonschema.validate(json.loads(text), SCHEMA)


def test_chat_json_object_and_n(openai_client):
    outs = chat(openai_client, response_format={"type": "json_object"}, n=2, seed=0, max_completion_tokens=150,
                extra_body={"guided_decoding_backend": "llguidance"}).choices
    assert len(outs) == 2
    for out in outs:
        if out.finish_reason == "stop":  # random text may fill the context inside a string
            assert isinstance(json.loads(out.message.content), dict)


def test_chat_guided_extras(openai_client):
    out = chat(openai_client, extra_body={"guided_choice": ["sunny", "rainy"]}, seed=1).choices[0]
    assert out.message.content in ("sunny", "rainy")
    out = chat(openai_client, extra_body={"guided_json": SCHEMA, "guided_decoding_backend": "llguidance"}, seed=2)
    jsonschema.validate(json.loads(out.choices[0].message.content), SCHEMA)


@pytest.mark.parametrize("backend", ["xgrammar", "llguidance"])
def test_completions_guided_choice_and_regex(openai_client, backend):
    def both(seed: int):
        choice = complete(openai_client, seed=seed, extra_body={"guided_choice": ["alpha", "beta gamma"],
                                                                "guided_decoding_backend": backend})
        regex = complete(openai_client, seed=seed, extra_body={"guided_regex": r"[0-9]{3}-[a-z]{2,4}",
                                                               "guided_decoding_backend": backend})
        return choice, regex

    for choice, regex in concurrently(both, range(3)):
        assert choice.choices[0].text in ("alpha", "beta gamma") and choice.choices[0].finish_reason == "stop"
        assert re.fullmatch(r"[0-9]{3}-[a-z]{2,4}", regex.choices[0].text)


def test_completions_grammar_stream_and_response_format(openai_client):
    grammar = 'root ::= "x=" [0-9] [0-9]? ";"'
    chunks = list(complete(openai_client, seed=0, stream=True, extra_body={"guided_grammar": grammar}))
    assert re.fullmatch(r"x=[0-9]{1,2};", "".join(c.choices[0].text for c in chunks if c.choices))
    out = complete(openai_client, seed=0, max_tokens=400, prompt=["a", "b"], extra_body={"response_format": JSON_SCHEMA_FORMAT})
    for choice in out.choices:
        jsonschema.validate(json.loads(choice.text), SCHEMA)


@pytest.mark.parametrize("kw, param", [
    (dict(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objekt"}}}),
     "response_format"),
    (dict(extra_body={"guided_json": {"type": "object", "properties": 5}}), "guided_json"),
    (dict(extra_body={"guided_grammar": 'root ::= "a" | missing'}), "guided_grammar"),
    (dict(extra_body={"guided_choice": []}), "guided_choice"),
    (dict(extra_body={"guided_regex": "(", "guided_decoding_backend": "llguidance"}), "guided_regex"),
    (dict(response_format={"type": "json_object"}, extra_body={"guided_regex": "a"}), "guided_regex"),
    (dict(extra_body={"guided_regex": "a", "guided_whitespace_pattern": " "}), "guided_whitespace_pattern"),
])
def test_bad_constraints_get_400_and_the_server_goes_on(openai_client, kw, param):
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as err:
            chat(openai_client, stream=stream, **kw)
        assert err.value.status_code == 400
        assert err.value.body["param"] == param and err.value.body["type"] == "invalid_request_error"
        assert err.value.body["message"]
    out = chat(openai_client, response_format=JSON_SCHEMA_FORMAT, seed=5).choices[0]
    jsonschema.validate(json.loads(out.message.content), SCHEMA)
