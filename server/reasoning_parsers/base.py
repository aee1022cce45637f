"""Reasoning parsers: split a reasoning model's reply into its reasoning (`<think>...</think>`)
and its content, streamed or whole, the way tool parsers do: text is emitted once it is decided
and never retracted, and `split` is the stream fed in one piece, so both paths agree.

    parser = ReasoningParserManager.get("qwen3").for_prompt(prompt_text)   # one per choice
    parser.stream(delta_text) -> (reasoning, content); then parser.finish()
"""
from __future__ import annotations

from typing import ClassVar

from octavo.server.plugins import ParserRegistry


class ReasoningParser:
    """Reasoning sits between `start` and `end`. The reply starts inside it when the prompt left
    a think block open (templates that put `<think>` in the generation prompt); otherwise it may
    open one with `start` (after whitespace). Reasoning that never ends is all reasoning.

    The content is everything after `end`, as generated (tool calls are parsed from it)."""

    start: ClassVar[str] = "<think>"
    end: ClassVar[str] = "</think>"

    def __init__(self, in_reasoning: bool = False):
        self.starts_in_reasoning = in_reasoning
        self._in_reasoning = in_reasoning
        self._opening = True  # at the reply's start: a `start` tag may come
        self._done = False    # the think block has ended: the rest is content
        self._buf = ""

    @classmethod
    def for_prompt(cls, prompt: str) -> ReasoningParser:
        return cls(cls.prompt_opens_reasoning(prompt))

    @classmethod
    def prompt_opens_reasoning(cls, prompt: str) -> bool:
        """True when the prompt's last think block is still open."""
        return prompt.rfind(cls.start) > prompt.rfind(cls.end)

    @classmethod
    def prompt_ends_reasoning(cls, prompt: str) -> bool:
        """True when the prompt itself closed the reply's think block (thinking switched off, as
        Qwen3's `enable_thinking=False`): the reply is all content, and a constraint applies from
        its first token."""
        return prompt.rstrip().endswith(cls.end)

    def split(self, text: str) -> tuple[str | None, str | None]:
        """(reasoning, content) of a whole reply; None for an empty part."""
        fresh = type(self)(self.starts_in_reasoning)
        parts = [fresh.stream(text), fresh.finish()]
        reasoning = "".join(r for r, _ in parts)
        content = "".join(c for _, c in parts)
        return reasoning or None, content or None

    def stream(self, delta: str) -> tuple[str, str]:
        """The reasoning and content this delta decides ("" for none)."""
        self._buf += delta
        return self._step(end=False)

    def finish(self) -> tuple[str, str]:
        return self._step(end=True)

    def _step(self, end: bool) -> tuple[str, str]:
        text, reasoning = self._buf, ""
        if self._opening:
            head = text.lstrip()
            if head.startswith(self.start):
                text, self._in_reasoning, self._opening = head[len(self.start):], True, False
            elif self.start.startswith(head) and not end:
                return "", ""  # may still become the start tag
            else:
                self._opening = False
        if self._in_reasoning:
            i = text.find(self.end)
            if i < 0:
                keep = 0 if end else _partial_suffix(text, self.end)
                self._buf = text[len(text) - keep:]
                return text[:len(text) - keep], ""
            reasoning, text = text[:i], text[i + len(self.end):]
            self._in_reasoning, self._done = False, True
        self._buf = ""
        return reasoning, text


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of `text` that is a proper prefix of `marker`."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


class ReasoningParserManager(ParserRegistry):
    """Name -> parser class. `--reasoning-parser NAME` picks one; `--reasoning-parser-plugin FILE` adds some."""
    base = ReasoningParser
    kind = "reasoning parser"
