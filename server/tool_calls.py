"""Tool calling on /v1/chat/completions.

`plan_tools` checks `tools` and `tool_choice` (bad ones get a 400) and says what the request
does with them:
- none: tools only reach the chat template;
- named / required: generation is constrained by guided decoding to the tool's parameters
  (named) or to a JSON list of {"name", "parameters"} objects (required), so calls are valid;
- auto: the server's `--tool-call-parser` finds calls in free text; when a tool is `strict`,
  a structural tag (the parser's call format) makes every call the model begins valid.
JSON written for calls is compact: a weak model cannot fill its tokens with whitespace.
Each choice of the response gets its own `ToolCallExtractor`, which turns generated text
into OpenAI tool calls, whole (`full`) or as stream deltas (`stream`, then `finish`).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

import partial_json_parser
from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for

from octavo.sampling_params import SamplingParams
from octavo.server.errors import bad_request
from octavo.server.tool_parsers import ToolParser
from octavo.structured_output import StructuredOutputParams

logger = logging.getLogger("octavo.server")

NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
CHOICES = ("none", "auto", "required")


def make_tool_call_id() -> str:
    """OpenAI's shape: "call_" and 24 characters."""
    return "call_" + secrets.token_hex(12)


@dataclass(slots=True)
class ToolPlan:
    choice: str  # none | auto | named | required
    tools: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> parameters schema
    named: str | None = None
    parser_cls: type[ToolParser] | None = None
    parallel: bool = True
    declared: list[dict[str, Any]] = field(default_factory=list)  # the request's tools, as sent
    strict: bool = False  # some tool asks for `strict` arguments

    def structured_outputs(self) -> StructuredOutputParams | None:
        """The guided-decoding constraint that makes calls valid: always for named and required
        choices, for auto when a tool is strict and the parser knows its call format."""
        if self.choice == "named":
            return StructuredOutputParams(json=self.tools[self.named], disable_any_whitespace=True)
        if self.choice == "required":
            items = [{"type": "object", "properties": {"name": {"type": "string", "enum": [name]},
                                                       "parameters": schema},
                      "required": ["name", "parameters"]} for name, schema in self.tools.items()]
            schema = {"type": "array", "minItems": 1, "items": {"anyOf": items}}
            if not self.parallel:
                schema["maxItems"] = 1
            return StructuredOutputParams(json=schema, disable_any_whitespace=True)
        if self.choice == "auto" and self.strict:
            tag = self.parser_cls.structural_tag(self.tools)
            if tag is None:
                _warn_unconstrained(self.parser_cls)
                return None
            return StructuredOutputParams(structural_tag=tag, disable_any_whitespace=True)
        return None

    def extractor(self) -> ToolCallExtractor:
        if self.choice == "named":
            return NamedCall(self.named)
        if self.choice == "required":
            return RequiredCalls()
        if self.choice == "auto" and self.parser_cls is not None:
            return ParsedCalls(self.parser_cls(self.declared))
        return ToolCallExtractor()


@functools.cache
def _warn_unconstrained(parser_cls: type[ToolParser]) -> None:
    """Once per parser: strict tools are asked for, but its call format has no structural tag."""
    logger.warning('strict tools: the %s tool parser has no structural tag, so their calls under tool_choice '
                   '"auto" are parsed but not constrained', parser_cls.__name__)


def with_tools(params: SamplingParams, plan: ToolPlan) -> SamplingParams:
    """Guided JSON for named and required choices (and strict auto calls); special tokens kept
    where the parser reads them."""
    if plan.choice == "auto" and not plan.parser_cls.skip_special_tokens:
        params = dataclasses.replace(params, skip_special_tokens=False)
    constraint = plan.structured_outputs()
    if constraint is None:
        return params
    if params.structured_outputs is not None:
        if plan.choice == "auto":  # the request's own constraint wins; its output is no call anyway
            return params
        raise bad_request(f"tool_choice {plan.choice!r} constrains the output itself and cannot be "
                          "combined with response_format or guided decoding", "tool_choice")
    return dataclasses.replace(params, structured_outputs=constraint)


def legacy_functions(tools: list[dict] | None, tool_choice: str | dict | None, functions: list[dict] | None,
                     function_call: str | dict | None) -> tuple[list[dict] | None, str | dict | None, bool]:
    """OpenAI's deprecated `functions` / `function_call` as `tools` / `tool_choice`; True when
    they were used (the reply then answers in their shape: one `function_call`)."""
    if functions is None and function_call is None:
        return tools, tool_choice, False
    if tools is not None or tool_choice is not None:
        raise bad_request("functions and function_call are the deprecated forms of tools and tool_choice; "
                          "send one form, not both", "functions" if functions is not None else "function_call")
    if functions is not None and not isinstance(functions, list):
        raise bad_request("functions must be a list of function definitions", "functions")
    tools = None if functions is None else [{"type": "function", "function": f} for f in functions]
    if isinstance(function_call, dict):
        if not isinstance(function_call.get("name"), str):
            raise bad_request('a named function_call is {"name": ...}', "function_call")
        tool_choice = {"type": "function", "function": {"name": function_call["name"]}}
    elif function_call is not None and function_call not in ("none", "auto"):
        raise bad_request(f"function_call must be 'none', 'auto' or {{\"name\": ...}}, got {function_call!r}",
                          "function_call")
    else:
        tool_choice = function_call
    return tools, tool_choice, True


def plan_tools(tools: list[dict] | None, tool_choice: str | dict | None, parallel_tool_calls: bool | None,
               parser_cls: type[ToolParser] | None) -> ToolPlan:
    schemas = _check_tools(tools) if tools is not None else {}
    common = dict(parallel=parallel_tool_calls is not False, declared=list(tools or []),
                  strict=any(t["function"].get("strict") is True for t in tools or []))
    if tool_choice is None:  # OpenAI's default: auto with tools; here auto needs a parser
        choice = "auto" if schemas and parser_cls is not None else "none"
        return ToolPlan(choice, schemas, parser_cls=parser_cls, **common)
    if isinstance(tool_choice, dict):
        name = _named_choice(tool_choice)
        if not schemas:
            raise bad_request("tool_choice names a function but no tools were given", "tool_choice")
        if name not in schemas:
            raise bad_request(f"tool_choice names {name!r}, which is not among the tools "
                              f"({', '.join(schemas)})", "tool_choice")
        return ToolPlan("named", schemas, named=name, **common)
    if tool_choice not in CHOICES:
        raise bad_request(f"tool_choice must be one of {', '.join(CHOICES)} or a named function, "
                          f"got {tool_choice!r}", "tool_choice")
    if tool_choice != "none" and not schemas:
        raise bad_request(f"tool_choice {tool_choice!r} needs tools", "tool_choice")
    if tool_choice == "auto" and parser_cls is None:
        raise bad_request('"auto" tool choice requires the server to run with --enable-auto-tool-choice '
                          "and --tool-call-parser", "tool_choice")
    return ToolPlan(tool_choice, schemas, parser_cls=parser_cls, **common)


def _named_choice(tool_choice: dict) -> str:
    function = tool_choice.get("function")
    if tool_choice.get("type") != "function" or not isinstance(function, dict) \
            or not isinstance(function.get("name"), str):
        raise bad_request('a named tool_choice is {"type": "function", "function": {"name": ...}}',
                          "tool_choice")
    return function["name"]


def _check_tools(tools: list[dict]) -> dict[str, dict[str, Any]]:
    """name -> parameters schema; 400 for malformed tools, bad schemas and duplicate names."""
    if not tools:
        raise bad_request("tools must hold at least one tool (or be left out)", "tools")
    schemas: dict[str, dict[str, Any]] = {}
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        function = tool.get("function")
        if tool.get("type") != "function" or not isinstance(function, dict):
            raise bad_request(f'{where} must be {{"type": "function", "function": {{...}}}}', where)
        name = function.get("name")
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise bad_request(f"{where}.function.name must be 1-64 letters, digits, '_' or '-', got {name!r}",
                              f"{where}.function.name")
        if name in schemas:
            raise bad_request(f"{where}: duplicate tool name {name!r}", f"{where}.function.name")
        schemas[name] = _check_schema(function.get("parameters"), f"{where}.function.parameters")
    return schemas


def _check_schema(schema: Any, where: str) -> dict[str, Any]:
    if schema is None:
        return {"type": "object"}
    if not isinstance(schema, dict):
        raise bad_request(f"{where} must be a JSON schema object", where)
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        raise bad_request(f"{where} is not a valid JSON schema: {exc.message}", where) from None
    return schema


# ------------------------------------------------------------------------------ extraction

@dataclass(slots=True)
class Extracted:
    """Content, OpenAI tool calls and reasoning (whole, or this delta's part of them)."""

    content: str | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    reasoning: str | None = None


class ToolCallExtractor:
    """Per choice. Streamed deltas concatenate to what `full` gives for the same text.

    This base finds no calls (tool_choice none, or auto without a parser): text is content."""

    def __init__(self) -> None:
        self.ids: dict[int, str] = {}

    def full(self, text: str) -> Extracted:
        return Extracted(text)

    def stream(self, delta_text: str) -> Extracted:
        return Extracted(delta_text)

    def finish(self) -> Extracted:
        return Extracted()

    @property
    def called(self) -> bool:
        return bool(self.ids)

    def finish_reason(self, reason: str | None) -> str | None:
        return "tool_calls" if reason == "stop" and self.called else reason

    def call(self, index: int, name: str, arguments: str) -> dict[str, Any]:
        """A whole call, for a non-streamed response."""
        self.ids[index] = make_tool_call_id()
        return {"id": self.ids[index], "type": "function", "function": {"name": name, "arguments": arguments}}

    def call_deltas(self, index: int, name: str | None, arguments: str | None) -> list[dict[str, Any]]:
        """OpenAI's stream shape: a call opens with index, id, type and name (arguments ""),
        then deltas of the same index carry argument fragments."""
        deltas = []
        if index not in self.ids:
            self.ids[index] = make_tool_call_id()
            deltas.append({"index": index, "id": self.ids[index], "type": "function",
                           "function": {"name": name, "arguments": ""}})
        if arguments:
            deltas.append({"index": index, "function": {"arguments": arguments}})
        return deltas


class NamedCall(ToolCallExtractor):
    """tool_choice names the function: the whole output is its arguments (guided JSON)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def full(self, text: str) -> Extracted:
        return Extracted(None, [self.call(0, self.name, text)])

    def stream(self, delta_text: str) -> Extracted:
        return Extracted(None, self.call_deltas(0, self.name, delta_text))

    def finish_reason(self, reason: str | None) -> str | None:
        return reason  # OpenAI: a forced function ends with "stop"


class RequiredCalls(ToolCallExtractor):
    """tool_choice "required": the output is a guided JSON list of {"name", "parameters"}.

    A call counts once its object is complete (the next one has begun or the list is closed):
    partial JSON parsing says how many objects the text holds so far. Streaming sends each call
    then; a list cut short by max_tokens keeps the calls it completed."""

    def __init__(self) -> None:
        super().__init__()
        self.text = ""

    def full(self, text: str) -> Extracted:
        calls = _complete_calls(text, final=True)
        if not calls:  # cut short before its first call was whole
            return Extracted(text)
        return Extracted(None, [self.call(i, *_name_arguments(c)) for i, c in enumerate(calls)])

    def stream(self, delta_text: str) -> Extracted:
        self.text += delta_text
        return self._deltas(_complete_calls(self.text, final=False))

    def finish(self) -> Extracted:
        return self._deltas(_complete_calls(self.text, final=True))

    def _deltas(self, calls: list[dict]) -> Extracted:
        """Deltas of the complete calls not sent yet."""
        return Extracted(None, [d for i in range(len(self.ids), len(calls))
                                for d in self.call_deltas(i, *_name_arguments(calls[i]))])


def _complete_calls(text: str, final: bool) -> list[dict]:
    """The whole call objects of a (possibly unfinished) guided list. Until the reply ends, the
    last object may still grow; at its end an object parsed in full is whole."""
    try:
        calls = json.loads(text)
        return calls if isinstance(calls, list) else []
    except ValueError:
        pass
    try:
        calls = partial_json_parser.loads(text)
    except Exception:  # noqa: BLE001 - nothing parseable yet
        return []
    if not isinstance(calls, list):
        return []
    whole = len(calls) - 1 if not text.rstrip().endswith("]") else len(calls)
    return [c for c in calls[:whole] if isinstance(c, dict) and "name" in c and "parameters" in c]


def _name_arguments(call: dict) -> tuple[str, str]:
    return call["name"], json.dumps(call["parameters"], ensure_ascii=False)


class ParsedCalls(ToolCallExtractor):
    """tool_choice "auto": the server's tool parser finds calls in the model's own format."""

    def __init__(self, parser: ToolParser) -> None:
        super().__init__()
        self.parser = parser

    def full(self, text: str) -> Extracted:
        found = self.parser.extract_tool_calls(text)
        if not found.tools_called:
            return Extracted(text)
        return Extracted(found.content, [self.call(i, c.name, c.arguments) for i, c in enumerate(found.tool_calls)])

    def stream(self, delta_text: str) -> Extracted:
        return self._delta(self.parser.extract_tool_calls_streaming(delta_text))

    def finish(self) -> Extracted:
        return self._delta(self.parser.finish())

    def _delta(self, delta) -> Extracted:
        if delta is None:
            return Extracted()
        return Extracted(delta.content, [c for d in delta.tool_calls for c in self.call_deltas(d.index, d.name, d.arguments)])


def arguments_as_objects(tool_calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Assistant tool calls for a chat template: OpenAI sends `arguments` as a JSON string,
    templates (Qwen's, Llama's, Mistral's) expect the object, as vLLM renders them."""
    out = []
    for call in tool_calls:
        function = call.get("function")
        if isinstance(function, dict) and isinstance(function.get("arguments"), str):
            try:
                arguments = json.loads(function["arguments"])
            except ValueError:
                arguments = function["arguments"]
            call = {**call, "function": {**function, "arguments": arguments}}
        out.append(call)
    return out
