"""Mistral: `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]` and, from the v11 tokenizer on,
`[TOOL_CALLS]name[ARGS]{...}` once per call."""
from __future__ import annotations

import re

from octavo.server.tool_parsers.base import (HOLD, Found, ToolCall, ToolParser, ToolParserManager,
                                             arguments_json, close, json_at, json_block, skip_ws)

START, ARGS = "[TOOL_CALLS]", "[ARGS]"
_NAME = re.compile(r"\s*([\w.\-]+)")


@ToolParserManager.register("mistral")
class MistralToolParser(ToolParser):
    skip_special_tokens = False  # [TOOL_CALLS] and [ARGS] are special tokens
    markers = (START,)

    def _match(self, text: str, i: int, marker: str, end: bool) -> Found:
        pos = i + len(START)
        first = skip_ws(text, pos)
        if first == len(text):
            return HOLD
        if text[first] in "[{":
            return json_block(text, pos, end)
        name = _NAME.match(text, pos)
        if name is None:
            return None
        after = name.end()
        if not text.startswith(ARGS, after):  # still inside the name, or inside "[ARGS]"
            return HOLD if after == len(text) or ARGS.startswith(text[after:]) else None
        found = json_at(text, after + len(ARGS), end, "{")
        if found is None or found is HOLD:
            return found
        args = arguments_json(found[0])
        return close(text, found[1], args and [ToolCall(name.group(1), args)], None, end)
