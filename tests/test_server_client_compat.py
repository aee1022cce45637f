"""What users arriving from today's vLLM and from agent frameworks send, over real HTTP with the
official `openai` client (and LangChain's OpenAI client): the defects a black-box run found
(each test failed before its fix), vLLM's `structured_outputs` form, generation defaults from
the model, vLLM command lines and offline /docs. The tiny model is random: valid output is the
server's doing (guided decoding), or a guided regex makes the model write a given reply."""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import re

import jsonschema
import openai
import pytest
from server_utils import MODEL_NAME, concurrently, server_model_path

from octavo.server.tool_parsers import ToolParserManager

WEATHER = {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
           "properties": {"city": {"type": "string", "maxLength": 12},
                          "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}}
TIME = {"type": "object", "additionalProperties": False, "required": ["zone"],
        "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "parameters": TIME}}]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
MESSAGES = [{"role": "user", "content": "What's the weather in Paris?"}]
CALL = '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}'


def escaped(text: str) -> str:
    return re.sub(r"([{}.\[\]()?*+|^$\\])", r"\\\1", text)


@pytest.fixture(scope="module")
def server(hermes_server):
    return hermes_server


@contextlib.contextmanager
def tool_parser(server, name: str):
    """Serve with another --tool-call-parser for the block (the setting is read per request)."""
    settings = server.state.settings
    old, settings.tool_parser = settings.tool_parser, ToolParserManager.get(name)
    try:
        yield
    finally:
        settings.tool_parser = old


def chat(client, **kw):
    body = dict(model=MODEL_NAME, messages=MESSAGES, tools=TOOLS, max_tokens=128, temperature=1.0)
    body.update(kw)
    return client.chat.completions.create(**body)


def assemble(chunks) -> tuple[str | None, list[dict], str | None]:
    """(content, calls, finish_reason) from a chat stream, checking OpenAI's chunk rule: at most
    one tool-call entry per chunk (LlamaIndex reads only the first)."""
    content, calls, finish = None, {}, None
    for chunk in chunks:
        for choice in chunk.choices:
            entries = choice.delta.tool_calls or []
            assert len(entries) <= 1, chunk
            if choice.delta.content:
                content = (content or "") + choice.delta.content
            for call in entries:
                entry = calls.setdefault(call.index, {"name": call.function.name, "arguments": ""})
                if call.id is not None:
                    assert call.function.name and call.function.arguments == "", "a call opens with empty arguments"
                entry["arguments"] += call.function.arguments or ""
            finish = choice.finish_reason or finish
    return content, [calls[i] for i in sorted(calls)], finish


# ------------------------------------------------------------------ defects


def test_required_with_two_tools_fits_128_tokens(openai_client):
    """Compact JSON: before, the random model filled max_tokens with whitespace and no call came back."""
    seeds = range(20)
    wholes = concurrently(lambda seed: chat(openai_client, tool_choice="required", seed=seed).choices[0], seeds)
    streams = concurrently(lambda seed: assemble(chat(openai_client, tool_choice="required", seed=seed, stream=True)),
                           seeds)
    for whole, (content, calls, finish) in zip(wholes, streams):
        # The random model may go on adding calls to the list: cut short, it keeps the ones it completed.
        assert whole.finish_reason in ("tool_calls", "length") and whole.message.tool_calls
        for call in whole.message.tool_calls:
            jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
        assert finish == whole.finish_reason and content is None
        assert [(c["name"], c["arguments"]) for c in calls] == \
            [(c.function.name, c.function.arguments) for c in whole.message.tool_calls]


def test_completion_top_logprobs_keep_every_candidate(openai_client):
    """Byte-level tokens that are not valid UTF-8 alone used to collide as "\ufffd" keys."""
    seen_bytes = False
    for seed in range(4):
        out = openai_client.completions.create(model=MODEL_NAME, prompt="héllo 世界 🚀", max_tokens=24, logprobs=5,
                                               seed=seed, temperature=1.0)
        lp = out.choices[0].logprobs
        for token, tops in zip(lp.tokens, lp.top_logprobs):
            assert len(tops) in (5, 6), tops  # the top 5, and the chosen token when it is not among them
            assert token in tops
            seen_bytes |= any(k.startswith("bytes:\\x") for k in tops)
    assert seen_bytes, "the byte-level model should have offered partial characters"
    out = openai_client.completions.create(model=MODEL_NAME, prompt="hi", max_tokens=4, logprobs=3,
                                           extra_body={"return_tokens_as_token_ids": True, "return_token_ids": True})
    lp = out.choices[0].logprobs
    assert lp.tokens == [f"token_id:{t}" for t in out.choices[0].model_extra["token_ids"]]
    assert all(re.fullmatch(r"token_id:\d+", k) for tops in lp.top_logprobs for k in tops)


def test_chat_logprobs_bytes_are_the_tokens_bytes(openai_client):
    out = openai_client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "世界 🚀"}],
                                                max_tokens=24, logprobs=True, top_logprobs=5, seed=3)
    for entry in out.choices[0].logprobs.content:
        for item in [entry, *entry.top_logprobs]:
            if item.token.startswith("bytes:"):
                assert bytes(item.bytes).hex() == item.token[len("bytes:"):].replace("\\x", "")
            else:
                assert bytes(item.bytes).decode() == item.token


@pytest.mark.parametrize("reply, content", [
    ("Here you go: {\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\", \"unit\": \"celsius\"}}",
     "Here you go:"),
    ("{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\", \"unit\": \"celsius\"}}", None),
])
def test_llama3_json_call_after_text(server, openai_client, reply, content):
    with tool_parser(server, "llama3_json"):
        body = dict(tool_choice="auto", seed=0, extra_body={"guided_regex": escaped(reply)})
        out = chat(openai_client, **body).choices[0]
        assert (out.message.content, out.finish_reason) == (content, "tool_calls")
        [call] = out.message.tool_calls
        assert (call.function.name, json.loads(call.function.arguments)) == \
            ("get_weather", {"city": "Paris", "unit": "celsius"})
        streamed = assemble(chat(openai_client, stream=True, **body))
        assert streamed == (content, [{"name": "get_weather", "arguments": call.function.arguments}], "tool_calls")


def test_streamed_calls_through_the_openai_stream_helper(openai_client):
    """openai's chat.completions.stream accumulator: one call with its arguments (before: two calls,
    or 'Invalid JSON: EOF')."""
    reply = f"Checking. <tool_call>{CALL}</tool_call>"
    kw = dict(model=MODEL_NAME, messages=MESSAGES, tools=TOOLS, max_tokens=128, seed=0,
              extra_body={"guided_regex": escaped(reply)})
    with openai_client.chat.completions.stream(**kw) as stream:
        final = stream.get_final_completion()
    [call] = final.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments)["city"] == "Paris"
    assert final.choices[0].message.content == "Checking."
    for choice in ("required", {"type": "function", "function": {"name": "get_time"}}):
        with openai_client.chat.completions.stream(**{**kw, "tool_choice": choice, "extra_body": None,
                                                     "seed": 1}) as stream:  # a seed whose list ends
            final = stream.get_final_completion()
        for call in final.choices[0].message.tool_calls:
            jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_streamed_calls_through_langchain(server):
    langchain_openai = pytest.importorskip("langchain_openai")
    llm = langchain_openai.ChatOpenAI(model=MODEL_NAME, base_url=server.url + "/v1", api_key="unused",
                                      max_tokens=128, temperature=1.0, seed=0, max_retries=0,
                                      extra_body={"guided_regex": escaped(f"<tool_call>{CALL}</tool_call>")})
    bound = llm.bind_tools(TOOLS)
    whole = bound.invoke("What's the weather in Paris?")
    merged = None
    for chunk in bound.stream("What's the weather in Paris?"):
        merged = chunk if merged is None else merged + chunk
    for message in (whole, merged):
        assert [(c["name"], c["args"]) for c in message.tool_calls] == \
            [("get_weather", {"city": "Paris", "unit": "celsius"})]


def test_developer_role(openai_client):
    knows = "{% for m in messages %}[{{ m.role }}|developer-aware]{{ m.content }}{% endfor %}"
    plain = "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}"
    messages = [{"role": "developer", "content": "Be terse."}, {"role": "user", "content": "Hi"}]
    for template, role in ((plain, "system"), (knows, "developer")):
        out = openai_client.chat.completions.create(
            model=MODEL_NAME, messages=messages, max_tokens=1, extra_body={"chat_template": template, "echo": False,
                                                                            "return_token_ids": True})
        from transformers import AutoTokenizer

        text = AutoTokenizer.from_pretrained(server_model_path()).decode(out.model_extra["prompt_token_ids"])
        assert text.startswith(f"[{role}") and "Be terse." in text


def test_calls_to_undeclared_tools_stay_content(openai_client):
    reply = '```json {"name": "reverse_string"} ``` <tool_call>{"name": "reverse_string", "arguments": {"s": "ab"}}</tool_call>'
    out = chat(openai_client, tools=TOOLS[:1], seed=0, extra_body={"guided_regex": escaped(reply)}).choices[0]
    assert (out.message.content, out.message.tool_calls, out.finish_reason) == (reply, [], "stop")


def test_legacy_functions(openai_client, http):
    functions = [t["function"] for t in TOOLS]
    body = {"model": MODEL_NAME, "messages": MESSAGES, "functions": functions, "max_tokens": 128, "seed": 0}
    named = http.post("/v1/chat/completions", json={**body, "function_call": {"name": "get_time"}}).json()
    message = named["choices"][0]["message"]
    assert message["tool_calls"] == [] and message["function_call"]["name"] == "get_time"
    jsonschema.validate(json.loads(message["function_call"]["arguments"]), TIME)
    regex = {"guided_regex": escaped(f"<tool_call>{CALL}</tool_call>")}
    auto = http.post("/v1/chat/completions", json={**body, **regex}).json()["choices"][0]
    assert auto["finish_reason"] == "function_call"
    assert auto["message"]["function_call"]["name"] == "get_weather"
    with http.stream("POST", "/v1/chat/completions", json={**body, **regex, "stream": True}) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    pieces = [e["choices"][0]["delta"].get("function_call") for e in events if e["choices"]]
    pieces = [p for p in pieces if p]
    assert pieces[0] == {"name": "get_weather", "arguments": ""}
    assert "".join(p.get("arguments", "") for p in pieces) == auto["message"]["function_call"]["arguments"]
    assert [e["choices"][0]["finish_reason"] for e in events if e["choices"]][-1] == "function_call"
    with pytest.raises(openai.BadRequestError) as err:
        openai_client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, tools=TOOLS,
                                              extra_body={"functions": functions})
    assert err.value.body["param"] == "functions"


# ------------------------------------------------------------------ vLLM's structured_outputs


CITY = {"type": "object", "required": ["city"], "properties": {"city": {"type": "string", "maxLength": 10}}}


@pytest.mark.parametrize("constraint, check", [
    ({"json": CITY}, lambda t: jsonschema.validate(json.loads(t), CITY)),
    ({"regex": "[a-z]{3}-[0-9]{2}"}, lambda t: re.fullmatch("[a-z]{3}-[0-9]{2}", t) or pytest.fail(t)),
    ({"choice": ["yes", "no"]}, lambda t: t in ("yes", "no") or pytest.fail(t)),
    ({"grammar": 'root ::= "x=" [0-9]'}, lambda t: re.fullmatch("x=[0-9]", t) or pytest.fail(t)),
    ({"json_object": True, "disable_any_whitespace": True}, lambda t: json.loads(t)),
])
def test_structured_outputs_field(openai_client, constraint, check):
    for seed in range(2):
        out = chat(openai_client, tools=openai.NOT_GIVEN, seed=seed, max_tokens=200,
                   extra_body={"structured_outputs": constraint}).choices[0]
        if out.finish_reason == "stop":
            check(out.message.content)
        text = openai_client.completions.create(model=MODEL_NAME, prompt="x", max_tokens=200, seed=seed,
                                                extra_body={"structured_outputs": constraint}).choices[0]
        if text.finish_reason == "stop":
            check(text.text)


def test_structured_outputs_disable_any_whitespace(openai_client):
    schema = {"type": "object", "required": ["a", "b"], "properties": {"a": {"type": "integer"}, "b": {"enum": [1, 2]}}}
    for seed in range(4):
        out = chat(openai_client, tools=openai.NOT_GIVEN, seed=seed, max_tokens=100,
                   extra_body={"structured_outputs": {"json": schema, "disable_any_whitespace": True}})
        text = out.choices[0].message.content
        assert text == json.dumps(json.loads(text))  # json.dumps' own spacing: one space after ',' and ':'
        out = chat(openai_client, tools=openai.NOT_GIVEN, seed=seed, max_tokens=100,
                   extra_body={"guided_json": schema, "guided_decoding_backend": "xgrammar:disable-any-whitespace"})
        assert out.choices[0].message.content == json.dumps(json.loads(out.choices[0].message.content))


@pytest.mark.parametrize("extra, param", [
    ({"structured_outputs": {"json": CITY}, "guided_regex": "a"}, "guided_regex"),
    ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs.choice"),
    ({"structured_outputs": {"jsn": CITY}}, "structured_outputs.jsn"),
    ({"structured_outputs": {"json": {"type": "objekt"}}}, "structured_outputs.json"),
    ({"structured_outputs": {"regex": "a", "whitespace_pattern": " "}}, "structured_outputs.whitespace_pattern"),
])
def test_structured_outputs_errors(openai_client, extra, param):
    with pytest.raises(openai.BadRequestError) as err:
        chat(openai_client, tools=openai.NOT_GIVEN, extra_body=extra)
    assert err.value.body["param"] == param


def test_misspelled_vllm_field_is_named_in_the_log(openai_client, caplog):
    with caplog.at_level(logging.WARNING, logger="octavo.server"):
        chat(openai_client, tools=openai.NOT_GIVEN, max_tokens=2, extra_body={"structured_output": {"json": CITY}})
    assert "structured_output (did you mean structured_outputs?)" in caplog.text


# ------------------------------------------------------------------ generation defaults, CLI, docs


def test_generation_config_defaults(server, openai_client, tmp_path):
    """The model's generation_config.json fills unset sampling fields: top_k=1 makes sampling greedy."""
    import shutil

    from octavo import LLM, SamplingParams
    from octavo.generation_config import generation_defaults

    model = tmp_path / "model"
    shutil.copytree(server_model_path(), model)
    (model / "generation_config.json").write_text(json.dumps({"do_sample": True, "top_k": 1, "temperature": 0.7,
                                                               "max_new_tokens": 7}))
    defaults = {"top_k": 1, "temperature": 0.7, "max_tokens": 7}
    assert generation_defaults(str(model)) == defaults
    assert generation_defaults(str(model), "vllm") == {}
    assert generation_defaults(str(model), overrides={"temperature": 0.2}) == {**defaults, "temperature": 0.2}
    llm = LLM(str(model), dtype="float32", num_kv_blocks=16)  # the engine reads them at start
    assert llm.get_default_sampling_params() == SamplingParams(**defaults)
    state = server.state
    state.generation_defaults = llm.engine.generation_defaults  # as a server over that model has them
    try:
        def reply(seed: int, **extra) -> str:
            return openai_client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, seed=seed,
                                                         extra_body=extra).choices[0].message.content

        texts = set(concurrently(reply, range(3)))
        assert len(texts) == 1  # top_k 1 from the model: the same reply whatever the seed
        out = openai_client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, seed=0,
                                                    extra_body={"top_k": 0})
        assert out.usage.completion_tokens == 7  # max_new_tokens
        assert set(concurrently(lambda seed: reply(seed, top_k=0), range(3))) != texts
    finally:
        state.generation_defaults = {}


def test_generation_defaults_from_gguf_metadata(tmp_path):
    import gguf
    import numpy as np

    from octavo.config import ConfigError
    from octavo.generation_config import generation_defaults

    path = tmp_path / "m.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_float32("general.sampling.temp", 0.5)
    writer.add_float32("general.sampling.top_p", 0.75)
    writer.add_uint32("general.sampling.top_k", 20)
    writer.add_tensor("x", np.zeros(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert generation_defaults(str(path)) == {"temperature": 0.5, "top_p": 0.75, "top_k": 20}
    assert generation_defaults(str(path), "vllm") == {}
    with pytest.raises(ConfigError, match="unknown key 'tempurature'"):
        generation_defaults(str(path), overrides={"tempurature": 1})


def test_server_wide_compact_json(server, openai_client):
    """--structured-outputs-config '{"disable_any_whitespace": true}' for every JSON constraint."""
    schema = {"type": "object", "required": ["a"], "properties": {"a": {"type": "array", "items": {"type": "integer"}}}}
    settings = server.state.settings
    settings.disable_any_whitespace = True
    try:
        for seed in range(3):
            out = chat(openai_client, tools=openai.NOT_GIVEN, seed=seed, max_tokens=150,
                       response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}})
            text = out.choices[0].message.content
            if out.choices[0].finish_reason == "stop":
                assert text == json.dumps(json.loads(text))
    finally:
        settings.disable_any_whitespace = False


def octavo_commands() -> dict[str, argparse.ArgumentParser]:
    """`serve`, `generate`, `bench NAME`, ...: the subcommand parsers as `octavo`'s main() builds them."""
    import octavo.cli as cli

    captured = {}

    def capture(self, *args, **kwargs):
        captured["root"] = self
        raise SystemExit(0)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(argparse.ArgumentParser, "parse_args", capture)
        with pytest.raises(SystemExit):
            cli.main([])
    found: dict[str, argparse.ArgumentParser] = {}

    def walk(parser: argparse.ArgumentParser, prefix: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found[f"{prefix}{name}"] = sub
                    walk(sub, f"{prefix}{name} ")

    walk(captured["root"], "")
    return found


def test_every_flag_has_a_help_line_with_its_default():
    commands = octavo_commands()
    assert {"serve", "generate", "bench serve", "bench throughput", "bench latency"} <= set(commands)
    missing = [f"{name} {'/'.join(a.option_strings) or a.dest}" for name, p in commands.items() for a in p._actions
               if a.dest != "help" and a.help != argparse.SUPPRESS and not isinstance(a, argparse._SubParsersAction)
               and "(default" not in (a.help or "")]
    assert not missing, missing
    assert any("--trust-remote-code" in a.option_strings for a in commands["serve"]._actions)


def test_vllm_flags_are_accepted_with_a_warning(caplog):
    from octavo.config import ConfigError
    from octavo.engine.args import config_from_args
    from octavo.executor import check_parallel_config
    from octavo.server.cli import resolve_args

    serve = octavo_commands()["serve"]
    args = resolve_args(serve.parse_args(["m", "--trust-remote-code", "--disable-frontend-multiprocessing",
                                          "-tp", "1", "--swap-space", "4", "--structured-outputs-config",
                                          '{"backend": "guidance", "reasoning_parser": "qwen3"}']))
    with caplog.at_level(logging.WARNING, logger="octavo"):
        config = config_from_args(args)
    assert "--trust-remote-code is accepted for vLLM compatibility and has no effect" in caplog.text
    assert "--swap-space" in caplog.text and config.guided_decoding_backend == "llguidance"
    assert args.reasoning_parser == "qwen3"
    from octavo.server.cli import build_settings

    so_config = '{"disable_any_whitespace": true, "enable_in_reasoning": true, "reasoning_parser": "deepseek_r1"}'
    settings = build_settings(resolve_args(serve.parse_args(["m", "--structured-outputs-config", so_config])))
    assert settings.disable_any_whitespace and settings.structured_outputs_in_reasoning
    assert settings.reasoning_parser.__name__ == "DeepSeekR1ReasoningParser"
    config = config_from_args(resolve_args(serve.parse_args(["m", "-tp", "2", "-pp", "2"])))
    assert config.tensor_parallel_size == 2  # a real flag now; pipeline parallelism is refused at start
    with pytest.raises(ConfigError, match="pipeline"):
        check_parallel_config(config, None)


def test_docs_work_offline(http):
    page = http.get("/docs")
    assert page.status_code == 200
    scripts = re.findall(r"(?:src|href)=['\"]([^'\"]+)['\"]", page.text)
    assert scripts and all(s.startswith("/") for s in scripts), scripts  # nothing from a CDN
    for path in scripts:
        assert http.get(path).status_code == 200, path
    redoc = http.get("/redoc")
    assert redoc.status_code == 200 and "/docs-static/redoc.standalone.js" in redoc.text
    assert "fonts.googleapis" not in redoc.text
    assert http.get("/openapi.json").json()["paths"]["/v1/chat/completions"]
