"""DeepSeek-R1 (and its distills): the reply is reasoning from its first token until `</think>`,
whether or not the template wrote `<think>` into the prompt (early R1 templates did not, and the
model then often skips the tag); a `<think>` the model writes anyway is dropped."""
from __future__ import annotations

from octavo.server.reasoning_parsers.base import ReasoningParser, ReasoningParserManager


@ReasoningParserManager.register("deepseek_r1")
class DeepSeekR1ReasoningParser(ReasoningParser):
    @classmethod
    def prompt_opens_reasoning(cls, prompt: str) -> bool:
        return not cls.prompt_ends_reasoning(prompt)
