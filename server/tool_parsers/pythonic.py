"""Pythonic calls (Llama 3.2/4, ToolACE): the reply starts with `[get_weather(city='Paris'), f()]`,
or such a list sits anywhere inside `<|python_start|>...<|python_end|>`. Keyword arguments must be
Python literals (`ast.literal_eval`); anything else is not a call and stays content."""
from __future__ import annotations

import ast
import re

from octavo.server.tool_parsers.base import (HOLD, Found, ToolCall, ToolParser, ToolParserManager,
                                             arguments_json, close, skip_ws)

START, END = "<|python_start|>", "<|python_end|>"
_HEAD = re.compile(r"\[\s*([A-Za-z_][\w.]*)?\s*")  # "[" and the first function's name


@ToolParserManager.register("pythonic")
class PythonicToolParser(ToolParser):
    skip_special_tokens = False  # <|python_start|> and <|python_end|> are special tokens (Llama 4)
    markers = (START,)
    start_markers = ("[",)

    def _match(self, text: str, i: int, marker: str, end: bool) -> Found:
        wrapped = marker == START
        pos = skip_ws(text, i + len(START) if wrapped else i)
        if pos == len(text):
            return HOLD
        head = _HEAD.match(text, pos)
        if head is None:
            return None
        if head.end() == len(text):
            return HOLD
        if not head.group(1) or text[head.end()] != "(":  # "[Note]", "[1, 2]": not a call list
            return None
        # The list ends at the first "]" up to which the text parses: brackets close in order, so no
        # longer text starting with "[" is a list once a shorter one is.
        stop = text.find("]", head.end())
        while stop >= 0:
            try:
                tree = ast.parse(text[pos:stop + 1], mode="eval").body
            except (SyntaxError, ValueError, RecursionError, MemoryError):
                stop = text.find("]", stop + 1)
                continue
            return close(text, stop + 1, _calls(tree), END if wrapped else None, end)
        return HOLD


def _calls(tree: ast.expr) -> list[ToolCall] | None:
    if not isinstance(tree, ast.List) or not tree.elts:
        return None
    calls = []
    for node in tree.elts:
        name = _name(node.func) if isinstance(node, ast.Call) else None
        if name is None or node.args or any(kw.arg is None for kw in node.keywords):
            return None  # positional or **kwargs arguments have no JSON object form
        try:
            args = arguments_json({kw.arg: ast.literal_eval(kw.value) for kw in node.keywords})
        except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
            return None
        if args is None:
            return None
        calls.append(ToolCall(name, args))
    return calls


def _name(node: ast.expr) -> str | None:
    """`f` or dotted `tools.weather.get`."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and (base := _name(node.value)):
        return f"{base}.{node.attr}"
    return None
