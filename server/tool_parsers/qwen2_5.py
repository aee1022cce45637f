"""Qwen2.5: the hermes tags, and the ```json fenced call object (or list of them) that Qwen2.5-Coder
writes instead."""
from __future__ import annotations

from octavo.server.tool_parsers.base import Found, ToolParserManager, json_block
from octavo.server.tool_parsers.hermes import START, HermesToolParser

FENCE, FENCE_END = "```json", "```"


@ToolParserManager.register("qwen2_5")
class Qwen25ToolParser(HermesToolParser):
    markers = (START, FENCE)

    def _match(self, text: str, i: int, marker: str, end: bool) -> Found:
        if marker != FENCE:
            return super()._match(text, i, marker, end)
        return json_block(text, i + len(FENCE), end, FENCE_END)  # a fenced non-call stays content
