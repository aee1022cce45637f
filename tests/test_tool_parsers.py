"""Tool-call parsers: exact non-streaming results per format, and the same results from the stream
under every chunking (one character at a time, token-like pieces, random splits)."""
import json
import random
import re

import pytest

from octavo.server.tool_parsers import (DeltaMessage, ExtractedToolCalls, ToolCall, ToolParser,
                                        ToolParserManager, json_block)

C = ToolCall


def E(content, *calls):
    return ExtractedToolCalls(bool(calls), list(calls), content)


WEATHER = C("get_weather", '{"city": "Paris"}')
TIME = C("get_time", "{}")
NESTED_JSON = '{"steps": [{"do": "a", "with": [1, 2.5, null, true]}, {"do": "b", "opts": {"deep": {"x": false}}}]}'
UNICODE_JSON = '{"text": "日本語 ünïcödé 🙂", "escaped": "é"}'

HERMES = [
    ("single", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>', E(None, WEATHER)),
    ("parallel", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
                 '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>', E(None, WEATHER, TIME)),
    ("text_before_after", 'Let me check.\n<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}'
                          '</tool_call>\n\nDone.', E("Let me check.\nDone.", WEATHER)),
    ("malformed", '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}</tool_call>',
     E('<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}</tool_call>')),
    ("malformed_then_valid", 'x <tool_call>{oops}</tool_call> <tool_call>{"name": "get_time", "arguments": {}}'
                             '</tool_call>', E("x <tool_call>{oops}</tool_call>", TIME)),
    ("truncated", '<tool_call>{"name": "get_weather", "arguments": {"city": "Par',
     E('<tool_call>{"name": "get_weather", "arguments": {"city": "Par')),
    ("unicode", '<tool_call>{"name": "translate", "arguments": {"text": "日本語 ünïcödé 🙂", "escaped": "\\u00e9"}}'
                '</tool_call>', E(None, C("translate", UNICODE_JSON))),
    ("nested", '<tool_call>{"name": "plan", "arguments": {"steps": [{"do": "a", "with": [1, 2.5, null, true]}, '
               '{"do": "b", "opts": {"deep": {"x": false}}}]}}</tool_call>', E(None, C("plan", NESTED_JSON))),
    ("end_tag_in_string", '<tool_call>{"name": "echo", "arguments": {"text": "</tool_call> and <tool_call>"}}'
                          '</tool_call>', E(None, C("echo", '{"text": "</tool_call> and <tool_call>"}'))),
    ("no_call", "The weather in Paris is sunny. Tags like <b>x</b> and < or > stay.",
     E("The weather in Paris is sunny. Tags like <b>x</b> and < or > stay.")),
    ("no_call_whitespace_kept", "  hello \n", E("  hello \n")),
    ("ends_in_marker_prefix", "See <tool_", E("See <tool_")),
    ("empty_arguments", '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>', E(None, TIME)),
    ("missing_arguments", '<tool_call>{"name": "get_time"}</tool_call>', E(None, TIME)),
    ("whitespace", '\n\n<tool_call>  \n\t{ "name" : "get_weather" ,\n "arguments" : { "city" : "Paris" } }  \n '
                   '</tool_call>\n', E(None, WEATHER)),
    ("unclosed_at_end", '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}\n',
     E(None, WEATHER)),
    ("not_a_call_object", '<tool_call>{"foo": 1}</tool_call>', E('<tool_call>{"foo": 1}</tool_call>')),
    ("junk_after_object", '<tool_call>{"name": "get_time", "arguments": {}} extra</tool_call>',
     E('<tool_call>{"name": "get_time", "arguments": {}} extra</tool_call>')),
    ("arguments_as_string", '<tool_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}</tool_call>',
     E(None, WEATHER)),
    ("nan_is_not_json", '<tool_call>{"name": "f", "arguments": {"x": NaN}}</tool_call>',
     E('<tool_call>{"name": "f", "arguments": {"x": NaN}}</tool_call>')),
]

QWEN_FENCED = [
    ("fenced_single", '```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```', E(None, WEATHER)),
    ("fenced_list", '```json\n[{"name": "get_weather", "arguments": {"city": "Paris"}}, '
                    '{"name": "get_time", "arguments": {}}]\n```', E(None, WEATHER, TIME)),
    ("fenced_text_before", 'Sure!\n```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```',
     E("Sure!", WEATHER)),
    ("fenced_not_a_call", 'Here is data:\n```json\n{"city": "Paris"}\n```',
     E('Here is data:\n```json\n{"city": "Paris"}\n```')),
    ("fenced_other_language", "```python\nprint('hi')\n```", E("```python\nprint('hi')\n```")),
    ("fence_in_string", '```json\n{"name": "md", "arguments": {"text": "```json x```"}}\n```',
     E(None, C("md", '{"text": "```json x```"}'))),
    ("fenced_malformed", '```json\n{"name": "get_time", "arguments": {}\n```',
     E('```json\n{"name": "get_time", "arguments": {}\n```')),
    ("tag_and_fence", '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>\n```json\n'
                      '{"name": "get_weather", "arguments": {"city": "Paris"}}\n```', E(None, TIME, WEATHER)),
    # Qwen2.5-Coder-0.5B at temperature 0 answers with nothing but the object (seen on the real model).
    ("bare_object", '{"name": "get_weather", "arguments": {"city": "Paris"}}', E(None, WEATHER)),
    ("bare_object_whitespace", '\n {"name": "get_weather", "arguments": {"city": "Paris"}}\n', E(None, WEATHER)),
    ("bare_list", '[{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_time", "arguments": {}}]',
     E(None, WEATHER, TIME)),
    ("bare_then_text", '{"name": "get_weather", "arguments": {"city": "Paris"}} done',
     E('{"name": "get_weather", "arguments": {"city": "Paris"}} done')),
    ("bare_without_arguments", '{"name": "get_weather"}', E('{"name": "get_weather"}')),
    ("bare_json_data", '{"city": "Paris"}', E('{"city": "Paris"}')),
    ("bare_not_at_start", 'Call: {"name": "get_weather", "arguments": {"city": "Paris"}}',
     E('Call: {"name": "get_weather", "arguments": {"city": "Paris"}}')),
]

MISTRAL = [
    ("single", '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}]', E(None, WEATHER)),
    ("parallel", '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}, '
                 '{"name": "get_time", "arguments": {}}]', E(None, WEATHER, TIME)),
    ("text_before_after", 'Let me look.[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}] '
                          'Anything else?', E("Let me look.Anything else?", WEATHER)),
    ("malformed", '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}]',
     E('[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}]')),
    ("unicode", '[TOOL_CALLS][{"name": "translate", "arguments": {"text": "日本語 ünïcödé 🙂", "escaped": "\\u00e9"}}]',
     E(None, C("translate", UNICODE_JSON))),
    ("nested", '[TOOL_CALLS][{"name": "plan", "arguments": {"steps": [{"do": "a", "with": [1, 2.5, null, true]}, '
               '{"do": "b", "opts": {"deep": {"x": false}}}]}}]', E(None, C("plan", NESTED_JSON))),
    ("markers_in_string", '[TOOL_CALLS][{"name": "echo", "arguments": {"text": "]}] [TOOL_CALLS] [ARGS]"}}]',
     E(None, C("echo", '{"text": "]}] [TOOL_CALLS] [ARGS]"}'))),
    ("no_call", "Paris is sunny [really] today.", E("Paris is sunny [really] today.")),
    ("ends_in_marker_prefix", "Use [TOOL_", E("Use [TOOL_")),
    ("empty_arguments", '[TOOL_CALLS][{"name": "get_time", "arguments": {}}]', E(None, TIME)),
    ("whitespace", '[TOOL_CALLS] [ {"name" : "get_weather" ,\n "arguments" : { "city":"Paris" } } ]\n',
     E(None, WEATHER)),
    ("single_object", '[TOOL_CALLS]{"name": "get_time", "arguments": {}}', E(None, TIME)),
    ("new_single", '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}', E(None, WEATHER)),
    ("new_parallel", '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]get_time[ARGS]{}',
     E(None, WEATHER, TIME)),
    ("new_text_before", 'Checking.[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}', E("Checking.", WEATHER)),
    ("new_unicode_nested", '[TOOL_CALLS]plan[ARGS]{"steps": [{"do": "a", "with": [1, 2.5, null, true]}, '
                           '{"do": "b", "opts": {"deep": {"x": false}}}]}[TOOL_CALLS]translate[ARGS]'
                           '{"text": "日本語 ünïcödé 🙂", "escaped": "\\u00e9"}',
     E(None, C("plan", NESTED_JSON), C("translate", UNICODE_JSON))),
    ("new_marker_in_string", '[TOOL_CALLS]echo[ARGS]{"text": "[TOOL_CALLS]x[ARGS]{}"}',
     E(None, C("echo", '{"text": "[TOOL_CALLS]x[ARGS]{}"}'))),
    ("new_malformed", '[TOOL_CALLS]get_weather[ARGS]{"city": Paris}', E('[TOOL_CALLS]get_weather[ARGS]{"city": Paris}')),
    ("new_without_args_marker", '[TOOL_CALLS]get_weather{"city": "Paris"}',
     E('[TOOL_CALLS]get_weather{"city": "Paris"}')),
    ("new_truncated", '[TOOL_CALLS]get_weather[ARGS]{"city": "Par', E('[TOOL_CALLS]get_weather[ARGS]{"city": "Par')),
]

LLAMA3 = [
    ("single", '{"name": "get_weather", "parameters": {"city": "Paris"}}', E(None, WEATHER)),
    ("python_tag", '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}', E(None, WEATHER)),
    ("parallel", '{"name": "get_weather", "parameters": {"city": "Paris"}}; {"name": "get_time", "parameters": {}}',
     E(None, WEATHER, TIME)),
    ("parallel_python_tag", '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}};'
                            '{"name": "get_time", "parameters": {}}', E(None, WEATHER, TIME)),
    ("arguments_key", '{"name": "get_weather", "arguments": {"city": "Paris"}}', E(None, WEATHER)),
    ("text_after", '{"name": "get_weather", "parameters": {"city": "Paris"}}\nI asked for the weather.',
     E("I asked for the weather.", WEATHER)),
    ("text_before", 'Here you go: {"name": "get_time", "parameters": {}}', E("Here you go:", TIME)),
    ("text_around", 'Sure.\n{"name": "get_weather", "parameters": {"city": "Paris"}} Anything else?',
     E("Sure.\nAnything else?", WEATHER)),
    ("json_in_text_is_no_call", 'Use {"a": {"b": 1}} here', E('Use {"a": {"b": 1}} here')),
    ("malformed", '{"name": "get_weather", "parameters": {"city": "Paris"}',
     E('{"name": "get_weather", "parameters": {"city": "Paris"}')),
    ("json_but_not_a_call", '{"name": "Paris", "country": "France"}', E('{"name": "Paris", "country": "France"}')),
    ("unicode", '{"name": "translate", "parameters": {"text": "日本語 ünïcödé 🙂", "escaped": "\\u00e9"}}',
     E(None, C("translate", UNICODE_JSON))),
    ("nested", '<|python_tag|>{"name": "plan", "parameters": {"steps": [{"do": "a", "with": [1, 2.5, null, true]}, '
               '{"do": "b", "opts": {"deep": {"x": false}}}]}}', E(None, C("plan", NESTED_JSON))),
    ("separator_in_string", '{"name": "echo", "parameters": {"text": "}; {\\"name\\": \\"x\\"}"}}',
     E(None, C("echo", '{"text": "}; {\\"name\\": \\"x\\"}"}'))),
    ("no_call", "The weather in Paris is sunny.", E("The weather in Paris is sunny.")),
    ("empty_parameters", '{"name": "get_time", "parameters": {}}', E(None, TIME)),
    ("whitespace", '\n  { "name" :"get_weather" ,"parameters":{ "city" : "Paris" } }  ;\n  '
                   '{"name":"get_time","parameters":{}}\n', E(None, WEATHER, TIME)),
    ("semicolon_then_junk", '{"name": "get_time", "parameters": {}}; oops',
     E('{"name": "get_time", "parameters": {}}; oops')),
    ("python_tag_code", '<|python_tag|>brave_search.call(query="Paris")',
     E('<|python_tag|>brave_search.call(query="Paris")')),
    ("truncated", '<|python_tag|>{"name": "get_weather", "parameters": {"ci',
     E('<|python_tag|>{"name": "get_weather", "parameters": {"ci')),
]

PYTHONIC = [
    ("single", "[get_weather(city='Paris')]", E(None, WEATHER)),
    ("parallel", "[get_weather(city='Paris'), get_time()]", E(None, WEATHER, TIME)),
    ("literal_types", "[f(a=1, b=2.5, c=True, d=None, e=[1, 'x'], g={'k': (1, 2)})]",
     E(None, C("f", '{"a": 1, "b": 2.5, "c": true, "d": null, "e": [1, "x"], "g": {"k": [1, 2]}}'))),
    ("text_after", "[get_weather(city='Paris')]\nDone.", E("Done.", WEATHER)),
    ("text_before_is_no_call", "I will call [get_weather(city='Paris')]",
     E("I will call [get_weather(city='Paris')]")),
    ("wrapped_after_text", "Let me check.<|python_start|>[get_weather(city='Paris')]<|python_end|>",
     E("Let me check.", WEATHER)),
    ("malformed", "[get_weather(city='Paris')", E("[get_weather(city='Paris')")),
    ("non_literal_argument", "[get_weather(city=paris + 1)]", E("[get_weather(city=paris + 1)]")),
    ("positional_argument", "[get_weather('Paris')]", E("[get_weather('Paris')]")),
    ("set_has_no_json", "[f(x={1, 2})]", E("[f(x={1, 2})]")),
    ("unicode", "[translate(text='日本語 ünïcödé 🙂', escaped=\"\\u00e9\")]", E(None, C("translate", UNICODE_JSON))),
    ("nested", "[plan(steps=[{'do': 'a', 'with': [1, 2.5, None, True]}, {'do': 'b', 'opts': {'deep': {'x': False}}}])]",
     E(None, C("plan", NESTED_JSON))),
    ("bracket_in_string", "[echo(text='a]b', more=\"[x]\")]", E(None, C("echo", '{"text": "a]b", "more": "[x]"}'))),
    ("end_tag_in_string", "<|python_start|>[echo(text='<|python_end|>')]<|python_end|>",
     E(None, C("echo", '{"text": "<|python_end|>"}'))),
    ("no_call", "The weather in Paris is sunny.", E("The weather in Paris is sunny.")),
    ("ends_in_marker_prefix", "Hm <|python_st", E("Hm <|python_st")),
    ("note_is_no_call", "[Note] nothing to call.", E("[Note] nothing to call.")),
    ("empty_arguments", "[get_time()]", E(None, TIME)),
    ("whitespace", "  [ get_weather ( city = 'Paris' ) ,\n  get_time( ) ]  \n", E(None, WEATHER, TIME)),
    ("dotted_name", "[weather.get(city='Paris')]", E(None, C("weather.get", '{"city": "Paris"}'))),
]

CASES = {"hermes": HERMES, "qwen2_5": HERMES + QWEN_FENCED, "mistral": MISTRAL, "llama3_json": LLAMA3,
         "pythonic": PYTHONIC}
PARAMS = [pytest.param(name, text, want, id=f"{name}-{case}") for name, cases in CASES.items()
          for case, text, want in cases]


@pytest.mark.parametrize("name, text, want", PARAMS)
def test_extract(name, text, want):
    assert ToolParserManager.get(name)().extract_tool_calls(text) == want


_TOKEN = re.compile(r"</?tool_call>|\[TOOL_CALLS\]|\[ARGS\]|<\|python_(?:tag|start|end)\|>|```|\s?\w+|\s+|[^\w\s]")


def chunkings(text: str) -> list[list[str]]:
    """One character at a time, token-like pieces (markers whole, as special tokens arrive), random splits."""
    tokens = _TOKEN.findall(text)
    assert "".join(tokens) == text
    out = [list(text), tokens, [text]]
    for seed in range(24):
        rng = random.Random(seed)
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(1, max(1, len(text) // 3)))))
        out.append([text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])])
    return out


def run_stream(parser: ToolParser, chunks: list[str]) -> ExtractedToolCalls:
    """Feed the chunks, reassemble the deltas the way a client does, and check the delta shape rules."""
    deltas = [parser.extract_tool_calls_streaming(c) for c in chunks] + [parser.finish()]
    content, names, args = "", [], []
    for delta in deltas:
        if delta is None:
            continue
        assert isinstance(delta, DeltaMessage) and (delta.content or delta.tool_calls), delta
        content += delta.content or ""
        for call in delta.tool_calls:
            if call.index == len(names):  # a new call: its first delta names it
                assert call.name, delta
                names.append(call.name)
                args.append("")
            else:
                assert call.index < len(names) and call.name is None, delta
            args[call.index] += call.arguments or ""
    calls = [C(n, a) for n, a in zip(names, args)]
    return ExtractedToolCalls(bool(calls), calls, content or None)


@pytest.mark.parametrize("name, text, want", PARAMS)
def test_streaming_matches_non_streaming(name, text, want):
    cls = ToolParserManager.get(name)
    for chunks in chunkings(text):
        assert run_stream(cls(), chunks) == want, chunks


def test_long_calls_past_the_early_check_limit():
    args = json.dumps({"code": "x = 'é'\n" * 1000}, ensure_ascii=False)
    body = '{"name": "write", "arguments": ' + args + "}"
    cls = ToolParserManager.get("hermes")
    good, bad = f"<tool_call>{body}</tool_call>", f"<tool_call>{body[:-1]} oops</tool_call> tail"
    for text, want in ((good, E(None, C("write", args))), (bad, E(bad))):
        assert cls().extract_tool_calls(text) == want
        assert run_stream(cls(), _TOKEN.findall(text)) == want


def test_content_streams_up_to_a_possible_marker():
    p = ToolParserManager.get("hermes")()
    assert p.extract_tool_calls_streaming("Hello wor") == DeltaMessage("Hello wor")
    assert p.extract_tool_calls_streaming("ld <tool") == DeltaMessage("ld")  # " <tool" may begin a call
    assert p.extract_tool_calls_streaming('_call>{"name": "get_time", ') is None
    delta = p.extract_tool_calls_streaming('"arguments": {}}</tool_call>')  # emitted at the end tag, not at finish
    assert delta.content is None and [(c.index, c.name, c.arguments) for c in delta.tool_calls] == [(0, "get_time", "{}")]
    assert p.extract_tool_calls_streaming(" bye") == DeltaMessage(" bye")  # whitespace before a call stays
    assert p.finish() is None


def test_malformed_block_flushes_before_finish():
    p = ToolParserManager.get("hermes")()
    text = '<tool_call>{"name": "f", "arguments": {"a": 1}</'
    assert p.extract_tool_calls_streaming(text) == DeltaMessage(text)
    assert p.finish() is None


def test_mistral_holds_the_name_until_its_arguments_parse():
    p = ToolParserManager.get("mistral")()
    assert p.extract_tool_calls_streaming("[TOOL_CALLS]get_wea") is None
    assert p.extract_tool_calls_streaming('ther[ARGS]{"city": "Par') is None
    delta = p.extract_tool_calls_streaming('is"}')
    assert [(c.index, c.name, c.arguments) for c in delta.tool_calls] == [(0, "get_weather", '{"city": "Paris"}')]


def test_extract_leaves_the_stream_alone():
    p = ToolParserManager.get("hermes")()
    p.extract_tool_calls_streaming("Hi <tool_")
    assert p.extract_tool_calls("<tool_call>{\"name\": \"get_time\"}</tool_call>") == E(None, TIME)
    assert run_stream(p, ['call>{"name": "get_time"}</tool_call>']) == E(None, TIME)


@pytest.mark.parametrize("name, text", [
    ("hermes", '<tool_call>{"name": "reverse_string", "arguments": {"s": "ab"}}</tool_call>'),
    ("qwen2_5", '```json\n{"name": "reverse_string", "arguments": {"s": "ab"}}\n```'),
    ("llama3_json", '{"name": "reverse_string", "parameters": {"s": "ab"}}'),
    ("mistral", '[TOOL_CALLS][{"name": "reverse_string", "arguments": {"s": "ab"}}]'),
    ("pythonic", "[reverse_string(s='ab')]"),
])
def test_calls_to_undeclared_tools_stay_content(name, text):
    declared = [{"type": "function", "function": {"name": "get_weather"}}]
    cls = ToolParserManager.get(name)
    assert cls(declared).extract_tool_calls(text) == E(text)
    for chunks in chunkings(text):
        assert run_stream(cls(declared), chunks) == E(text), chunks
    assert cls([{"type": "function", "function": {"name": "reverse_string"}}]).extract_tool_calls(text).tools_called


def test_skip_special_tokens():
    assert ToolParser.skip_special_tokens is True
    for name in ("hermes", "qwen2_5", "mistral", "llama3_json", "pythonic"):
        assert ToolParserManager.get(name).skip_special_tokens is False


# ------------------------------------------------------------------ registry


@pytest.fixture
def registry(monkeypatch):
    monkeypatch.setattr(ToolParserManager, "_parsers", dict(ToolParserManager._parsers))
    return ToolParserManager


def test_register_decorator(registry):
    @registry.register("angle")
    class Angle(ToolParser):
        markers = ("<<",)

        def _match(self, text, i, marker, end):
            return json_block(text, i + 2, end, ">>")

    assert registry.get("angle") is Angle
    assert "angle" in registry.names()
    assert Angle().extract_tool_calls('Hi <<{"name": "get_time"}>>') == E("Hi", TIME)


def test_register_rejects_non_parsers(registry):
    with pytest.raises(TypeError, match="ToolParser subclass"):
        registry.register("bad")(object)


def test_unknown_name_lists_known(registry):
    with pytest.raises(ValueError, match="unknown tool parser 'nope'; known: hermes, llama3_json, mistral, "
                                         "pythonic, qwen2_5"):
        registry.get("nope")


PLUGIN = '''
from dataclasses import dataclass

from octavo.server.tool_parsers import ToolParser, ToolParserManager, json_block


@dataclass
class Unused:  # a dataclass needs its module in sys.modules
    x: int


@ToolParserManager.register("myparser")
class MyParser(ToolParser):
    markers = ("<fn>",)

    def _match(self, text, i, marker, end):
        return json_block(text, i + len(marker), end, "</fn>")
'''


def test_import_plugin(registry, tmp_path):
    path = tmp_path / "my_parser.py"
    path.write_text(PLUGIN)
    registry.import_plugin(str(path))
    parser = registry.get("myparser")()
    text = 'ok <fn>{"name": "get_weather", "arguments": {"city": "Paris"}}</fn>'
    assert parser.extract_tool_calls(text) == E("ok", WEATHER)
    for chunks in chunkings(text):
        assert run_stream(registry.get("myparser")(), chunks) == E("ok", WEATHER)


def test_import_plugin_missing_file(registry, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a file"):
        registry.import_plugin(tmp_path / "absent.py")
