"""Qwen3 (and QwQ-style templates): the model opens `<think>` itself, or the template opens it in
the generation prompt (Qwen3 *-Thinking-2507); `enable_thinking=False` closes an empty block in
the prompt, and the reply is all content."""
from __future__ import annotations

from octavo.server.reasoning_parsers.base import ReasoningParser, ReasoningParserManager


@ReasoningParserManager.register("qwen3")
class Qwen3ReasoningParser(ReasoningParser):
    pass
