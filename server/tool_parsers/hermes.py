"""Hermes format (Hermes 2 Pro, Qwen2.5/3): `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` per call."""
from __future__ import annotations

import json
from typing import Any

from octavo.server.tool_parsers.base import Found, ToolParser, ToolParserManager, json_block

START, END = "<tool_call>", "</tool_call>"


@ToolParserManager.register("hermes")
class HermesToolParser(ToolParser):
    skip_special_tokens = False  # some checkpoints mark <tool_call> as a special token
    markers = (START,)

    def _match(self, text: str, i: int, marker: str, end: bool) -> Found:
        # The JSON decoder finds where the object ends, so "</tool_call>" inside a string is just text.
        return json_block(text, i + len(START), end, END)

    @classmethod
    def structural_tag(cls, tools: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """As Qwen's template writes a call: the tag, a newline, the object, a newline, the end tag."""
        return {"triggers": [START], "structures": [
            {"begin": f'{START}\n{{"name": {json.dumps(name)}, "arguments": ', "schema": schema, "end": f"}}\n{END}"}
            for name, schema in tools.items()]}
