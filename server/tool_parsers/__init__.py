"""Tool-call parsers: turn a model's generated text into OpenAI tool calls, streamed or whole.

    parser = ToolParserManager.get("hermes")(request_tools)   # one instance per request
    parser.extract_tool_calls(text) -> ExtractedToolCalls      # non-streaming
    parser.extract_tool_calls_streaming(delta) -> DeltaMessage | None, then parser.finish()

Built-ins: hermes, mistral, llama3_json, pythonic, qwen2_5. See base.py for how a parser decides.
"""
from octavo.server.tool_parsers.base import (HOLD, DeltaMessage, DeltaToolCall, ExtractedToolCalls, Found,
                                             ToolCall, ToolParser, ToolParserManager, arguments_json,
                                             call_from_json, calls_from_json, close, expect, json_at,
                                             json_block, skip_ws)
# Importing the built-ins registers them.
from octavo.server.tool_parsers import hermes, llama3_json, mistral, pythonic, qwen2_5  # noqa: F401

__all__ = ["HOLD", "DeltaMessage", "DeltaToolCall", "ExtractedToolCalls", "Found", "ToolCall", "ToolParser",
           "ToolParserManager", "arguments_json", "call_from_json", "calls_from_json", "close", "expect",
           "json_at", "json_block", "skip_ws"]
