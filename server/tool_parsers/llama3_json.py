"""Llama 3.x JSON calls: `{"name": ..., "parameters": {...}}` (optionally after `<|python_tag|>`),
several joined by `;`. The reply may open with text ("Here you go: {...}"), as Llama 3 models
write and as vLLM parses; a JSON object is a call only when it has both keys."""
from __future__ import annotations

import json
from typing import Any

from octavo.server.tool_parsers.base import (HOLD, Found, ToolParser, ToolParserManager, call_from_json,
                                             json_at, skip_ws)

PYTHON_TAG = "<|python_tag|>"


@ToolParserManager.register("llama3_json")
class Llama3JsonToolParser(ToolParser):
    skip_special_tokens = False  # <|python_tag|> is a special token
    markers = (PYTHON_TAG, "{")

    def _match(self, text: str, i: int, marker: str, end: bool) -> Found:
        pos = i + len(PYTHON_TAG) if marker == PYTHON_TAG else i
        calls = []
        while True:
            found = json_at(text, pos, end, "{")
            if found is None or found is HOLD:
                return found
            # The block is all calls or none.
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

    @classmethod
    def structural_tag(cls, tools: dict[str, dict[str, Any]]) -> dict[str, Any]:
        return {"triggers": ['{"name"'], "structures": [
            {"begin": f'{{"name": {json.dumps(name)}, "parameters": ', "schema": schema, "end": "}"}
            for name, schema in tools.items()]}
