"""Reasoning parsers: `<think>...</think>` to the message's `reasoning` field (see base.py).

Built-ins: deepseek_r1, qwen3."""
from octavo.server.reasoning_parsers.base import ReasoningParser, ReasoningParserManager
# Importing the built-ins registers them.
from octavo.server.reasoning_parsers import deepseek_r1, qwen3  # noqa: F401

__all__ = ["ReasoningParser", "ReasoningParserManager"]
