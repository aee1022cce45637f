"""Llama 3.x JSON calls: the reply starts (after whitespace, optionally `<|python_tag|>`) with
`{"name": ..., "parameters": {...}}`, several joined by `;`. Anywhere else JSON is just content."""
from __future__ import annotations

from octavo.server.tool_parsers.base import (HOLD, Found, ToolParser, ToolParserManager, call_from_json,
                                             json_at, skip_ws)

PYTHON_TAG = "<|python_tag|>"


@ToolParserManager.register("llama3_json")
class Llama3JsonToolParser(ToolParser):
    skip_special_tokens = False  # <|python_tag|> is a special token
    start_markers = (PYTHON_TAG, "{")

    def _match(self, text: str, i: int, marker: str, end: bool) -> Found:
        pos = i + len(PYTHON_TAG) if marker == PYTHON_TAG else i
        calls = []
        while True:
            found = json_at(text, pos, end, "{")
            if found is None or found is HOLD:
                return found
            # A bare JSON reply is only a call when it has both keys; the block is all calls or none.
            call = call_from_json(found[0], require_args=True)
            if call is None:
                return None
            calls.append(call)
            after = skip_ws(text, found[1])
            if after == len(text) and not end:
                return HOLD  # a ";" and another call may follow
            if not text.startswith(";", after):
                return found[1], calls
            pos = after + 1
