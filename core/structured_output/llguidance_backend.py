"""llguidance: lazy Earley parsing with a token trie, masks computed on demand in parallel."""
from __future__ import annotations

import json

import llguidance as llg
import llguidance.hf
import llguidance.torch
import torch

from octavo.structured_output.backend import GrammarBackend, GrammarError
from octavo.structured_output.params import StructuredOutputParams


_COMPACT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}  # one space at most


class LLGuidanceBackend(GrammarBackend):
    name = "llguidance"

    def __init__(self, tokenizer, vocab_size: int, eos_token_id: int | None):
        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=eos_token_id)
        self.executor = llg.LLExecutor()
        self._stop_ids = frozenset(self.tokenizer.eos_tokens)

    @classmethod
    def parse(cls, spec: StructuredOutputParams) -> str:
        try:
            if spec.is_json:
                schema = spec.schema()
                options = {"whitespace_pattern": spec.whitespace_pattern} if spec.whitespace_pattern else {}
                if spec.disable_any_whitespace:
                    options = _COMPACT
                grammar = llg.LLMatcher.grammar_from_json_schema(
                    _closed(schema) if spec.strict and not spec.json_object else schema, overrides=options or None)
            elif spec.structural_tag is not None:
                grammar = _structural_tag(spec.tag(), spec.disable_any_whitespace)
            elif spec.regex is not None:
                grammar = llg.LLMatcher.grammar_from_regex(spec.regex)
            elif spec.choice is not None:
                grammar = llg.grammar_from("choice", spec.choice)
            else:
                grammar = llg.grammar_from("grammar", spec.grammar)  # Lark, or GBNF converted to Lark
        except ValueError as exc:
            raise GrammarError(str(exc)) from None
        is_error, messages = llg.LLMatcher.validate_grammar_with_warnings(grammar)
        if is_error:
            raise GrammarError(messages[0].strip())
        return grammar

    @property
    def stop_token_ids(self) -> frozenset[int]:
        return self._stop_ids

    def compile(self, grammar: str) -> llg.LLMatcher:
        """A matcher never advanced: new_matcher copies it (the grammar is built only once)."""
        matcher = llg.LLMatcher(self.tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise GrammarError(matcher.get_error())
        return matcher

    def new_matcher(self, compiled: llg.LLMatcher) -> llg.LLMatcher:
        return compiled.deep_copy()

    def fill_bitmask(self, matchers: list, bitmask: torch.Tensor, rows: list[int]) -> None:
        llguidance.torch.fill_next_token_bitmask_par(self.executor, list(zip(matchers, rows)), bitmask)

    def accept(self, matchers: list, tokens: list[int]) -> list[bool]:
        return self.executor.consume_token_par(list(zip(matchers, tokens)))


def _structural_tag(tag: dict, compact: bool) -> str:
    """vLLM's structural tag as a Lark grammar: free text, where each trigger (matched as text, a
    lazy lexeme) starts its structure. (llguidance's StructTag.to_grammar reads a trigger like
    `<tool_call>` as a special token, which fails on tokenizers where it is plain text.)"""
    options = {"x-guidance": _COMPACT} if compact else {}
    names = [f"tag_{i}" for i in range(len(tag["structures"]))]
    lines = ["%llguidance {}", f"start: ({' | '.join(names)})* tag_end", "tag_end: TAG_TEXT", "TAG_TEXT: /(.|\\n)*/"]
    for name, s in zip(names, tag["structures"]):
        trigger = next(t for t in tag["triggers"] if s["begin"].startswith(t))
        rest = s["begin"][len(trigger):]
        lines += [f"{name}_trig[lazy]: TAG_TEXT {json.dumps(trigger)}",
                  f"{name}: {name}_trig {json.dumps(rest) if rest else ''} %json {json.dumps(_closed(s['schema']) | options)} "
                  f"{json.dumps(s['end']) if s['end'] else ''}"]
    return "\n".join(lines) + "\n"


def _closed(schema):
    """The schema with additionalProperties false wherever properties are listed and it is unset."""
    if isinstance(schema, list):
        return [_closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _closed(v) for k, v in schema.items()}
    if "properties" in out:
        out.setdefault("additionalProperties", False)
    return out
