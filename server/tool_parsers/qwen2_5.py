"""Qwen2.5: the hermes tags; and what Qwen2.5-Coder writes instead of them: a ```json fenced call
object (or list of them), or a reply that is nothing but the bare call object (or list)."""
from __future__ import annotations

from octavo.server.tool_parsers.base import HOLD, Found, ToolParserManager, calls_from_json, json_at, json_block
from octavo.server.tool_parsers.hermes import START, HermesToolParser

FENCE, FENCE_END = "```json", "```"


@ToolParserManager.register("qwen2_5")
class Qwen25ToolParser(HermesToolParser):
    markers = (START, FENCE)
    start_markers = ("{", "[")

    def _match(self, text: str, i: int, marker: str, end: bool) -> Found:
        if marker == FENCE:
            return json_block(text, i + len(FENCE), end, FENCE_END)  # a fenced non-call stays content
        if marker in self.start_markers:
            return self._bare(text, i, end)
        return super()._match(text, i, marker, end)

    @staticmethod
    def _bare(text: str, i: int, end: bool) -> Found:
        """A bare reply is a call only when it is all call objects with arguments, and nothing else."""
        found = json_at(text, i, end)
        if not isinstance(found, tuple):
            return found
        value, stop = found
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(item, dict) and "arguments" in item for item in items):
            return None
        calls = calls_from_json(value)
        if calls is None or text[stop:].strip():
            return None
        return (stop, calls) if end else HOLD  # text may still follow the object
