"""Reasoning models over real HTTP with the official `openai` client: `--reasoning-parser qwen3`
on a tiny Qwen3 whose template opens `<think>` in the generation prompt. The model is random,
so a logit bias on `</think>` (and `<tool_call>`) makes it end its reasoning (and begin a call)
within a few tokens; what follows is the server's doing: the split into `reasoning` and
content, streamed as deltas, the grammar that waits for the end of reasoning, and strict tool
calls constrained once the model begins one."""
from __future__ import annotations

import functools
import json
import random

import jsonschema
import pytest
from server_utils import NO_THINKING, THINK_END, TOOL_CALL, concurrently, reasoning_model_path
from server_utils import REASONING_MODEL as MODEL

from octavo.server.reasoning_parsers import ReasoningParser, ReasoningParserManager

MESSAGES = [{"role": "user", "content": "Weather in Paris?"}]
CITY = {"type": "object", "additionalProperties": False, "required": ["city"],
        "properties": {"city": {"type": "string", "maxLength": 8}}}
STRICT_TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": CITY, "strict": True}}]


@pytest.fixture(scope="module")
def server(reasoning_server):
    return reasoning_server


@functools.lru_cache(maxsize=1)
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(reasoning_model_path())


def chat(client, **kw):
    body = dict(model=MODEL, messages=MESSAGES, max_completion_tokens=24, temperature=1.0)
    body.update(kw)
    return client.chat.completions.create(**body)


def reasoning_of(message) -> str | None:
    extra = message.model_extra or {}
    assert extra.get("reasoning") == extra.get("reasoning_content")  # vLLM's name and its older one
    return extra.get("reasoning")


def test_think_block_goes_to_reasoning(openai_client):
    outs = concurrently(lambda seed: chat(openai_client, seed=seed, logit_bias={str(THINK_END): 4},
                                          extra_body={"return_token_ids": True}), range(4))
    for r in outs:
        choice = r.choices[0]
        text = tokenizer().decode(choice.model_extra["token_ids"])
        reasoning, content = reasoning_of(choice.message), choice.message.content
        if "</think>" in text:
            assert text == (reasoning or "") + "</think>" + (content or "")
        else:  # still thinking when max_tokens ran out: all of it is reasoning
            assert (reasoning, content) == (text, None)


def _streamed(client, seed: int) -> tuple[str | None, str | None]:
    reasoning, content = "", ""
    for chunk in chat(client, seed=seed, logit_bias={str(THINK_END): 4}, stream=True):
        for choice in chunk.choices:
            delta = choice.delta.model_extra or {}
            assert delta.get("reasoning") == delta.get("reasoning_content")
            assert not (delta.get("reasoning") and choice.delta.content), "one part per chunk"
            reasoning += delta.get("reasoning") or ""
            content += choice.delta.content or ""
    return reasoning or None, content or None


def test_streamed_reasoning_deltas_add_up(openai_client):
    seeds = range(4)
    wholes = concurrently(lambda seed: chat(openai_client, seed=seed, logit_bias={str(THINK_END): 4}), seeds)
    for whole, streamed in zip(wholes, concurrently(lambda seed: _streamed(openai_client, seed), seeds)):
        assert streamed == (reasoning_of(whole.choices[0].message), whole.choices[0].message.content)


def test_thinking_switched_off_is_all_content(openai_client):
    out = chat(openai_client, seed=0, extra_body=NO_THINKING).choices[0].message
    assert reasoning_of(out) is None and out.content


@pytest.mark.parametrize("seed", range(3))
def test_structured_output_applies_after_reasoning(openai_client, seed):
    """A grammar applied from the first token would forbid `</think>`: the reply would be one JSON
    'reasoning' and no content."""
    fmt = {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY}}
    out = chat(openai_client, seed=seed, response_format=fmt, logit_bias={str(THINK_END): 6},
               max_completion_tokens=120).choices[0]
    assert out.finish_reason == "stop"
    assert reasoning_of(out.message) is not None or out.message.content.startswith("{")
    jsonschema.validate(json.loads(out.message.content), CITY)
    off = chat(openai_client, seed=seed, response_format=fmt, max_completion_tokens=120, extra_body=NO_THINKING)
    jsonschema.validate(json.loads(off.choices[0].message.content), CITY)  # closed in the prompt: from the start


@pytest.mark.parametrize("thinking", [True, False])
def test_strict_tools_under_auto_are_constrained(openai_client, thinking):
    """Once the model writes <tool_call>, the structural tag forces a call to a declared tool with
    valid arguments; tools are parsed from the content after the reasoning."""
    extra = {} if thinking else NO_THINKING
    calls = 0
    outs = concurrently(lambda seed: chat(openai_client, seed=seed, tools=STRICT_TOOLS, max_completion_tokens=100,
                                          logit_bias={str(THINK_END): 4, str(TOOL_CALL): 4}, extra_body=extra),
                        range(6))
    for out in (r.choices[0] for r in outs):
        for call in out.message.tool_calls or []:
            assert call.function.name == "get_weather"
            jsonschema.validate(json.loads(call.function.arguments), CITY)
            assert call.function.arguments == json.dumps(json.loads(call.function.arguments), ensure_ascii=False)
            calls += 1
        if not thinking:
            assert reasoning_of(out.message) is None
    assert calls >= 2


def test_pydantic_tools_through_parse(openai_client):
    """openai's chat.completions.parse with pydantic_function_tool (strict) gets arguments it can parse."""
    import openai
    import pydantic

    class GetWeather(pydantic.BaseModel):
        city: str = pydantic.Field(max_length=8)

    parsed = 0
    outs = concurrently(lambda seed: openai_client.chat.completions.parse(
        model=MODEL, messages=MESSAGES, tools=[openai.pydantic_function_tool(GetWeather)], seed=seed,
        logit_bias={str(TOOL_CALL): 5}, max_completion_tokens=150, extra_body=NO_THINKING,
        stop=["</tool_call>"]), range(4))  # the reply ends with its first call (parse() refuses a cut-off reply)
    for r in outs:
        for call in r.choices[0].message.tool_calls or []:
            assert isinstance(call.function.parsed_arguments, GetWeather)
            parsed += 1
    assert parsed >= 1


# ------------------------------------------------------------------ the parsers on their own


def _pieces(text: str, seed: int) -> list[str]:
    rng, out, i = random.Random(seed), [], 0
    while i < len(text):
        n = rng.randint(1, 5)
        out.append(text[i:i + n])
        i += n
    return out


@pytest.mark.parametrize("name, prompt, text, want", [
    ("qwen3", "<think>\n", "hm</think>\n\nHi", ("hm", "\n\nHi")),
    ("qwen3", "", "<think>\nhm</think>Hi", ("\nhm", "Hi")),
    ("qwen3", "", "  Hi <think>", (None, "  Hi <think>")),
    ("qwen3", "", "<thi", (None, "<thi")),
    ("qwen3", "<think>\n", "cut short</thi", ("cut short</thi", None)),
    ("qwen3", "<think>\n\n</think>\n\n", "Hi</think>x", (None, "Hi</think>x")),
    ("deepseek_r1", "", "abc</think>def", ("abc", "def")),
    ("deepseek_r1", "", "<think>abc</think>def", ("abc", "def")),
    ("deepseek_r1", "<think>\n\n</think>\n\n", "abc</think>def", (None, "abc</think>def")),
])
def test_parsers_split_the_same_streamed_or_whole(name, prompt, text, want):
    cls = ReasoningParserManager.get(name)
    assert cls.for_prompt(prompt).split(text) == want
    for seed in range(30):
        parser = cls.for_prompt(prompt)
        parts = [parser.stream(p) for p in _pieces(text, seed)] + [parser.finish()]
        reasoning, content = "".join(r for r, _ in parts), "".join(c for _, c in parts)
        assert (reasoning or None, content or None) == want, seed


def test_reasoning_parser_plugin(tmp_path, monkeypatch):
    monkeypatch.setattr(ReasoningParserManager, "_parsers", dict(ReasoningParserManager._parsers))
    plugin = tmp_path / "mine.py"
    plugin.write_text("from octavo.server.reasoning_parsers import ReasoningParser, ReasoningParserManager\n\n"
                      "@ReasoningParserManager.register('seed_think')\nclass Seed(ReasoningParser):\n"
                      "    start, end = '<seed:think>', '</seed:think>'\n")
    ReasoningParserManager.import_plugin(plugin)
    parser = ReasoningParserManager.get("seed_think")
    assert issubclass(parser, ReasoningParser)
    assert parser.for_prompt("").split("<seed:think>a</seed:think>b") == ("a", "b")
    with pytest.raises(ValueError, match="unknown reasoning parser 'nope'; known: deepseek_r1, qwen3, seed_think"):
        ReasoningParserManager.get("nope")
