"""xgrammar (the default): grammars compiled to token-mask caches, C++ batch fill."""
from __future__ import annotations

import json
import os

import torch
import xgrammar as xgr

from octavo.structured_output.backend import GrammarBackend, GrammarError, error_text
from octavo.structured_output.params import StructuredOutputParams


# xgrammar 0.2.8-0.2.9 string classes are looser than JSON: strings with a length limit may hold
# raw control characters, and every string may hold UTF-8-encoded surrogates (ED A0 80..ED BF BF),
# which are not UTF-8 (they decode to U+FFFD, three per surrogate, past the length limit). The
# grammar is rebuilt with the right class.
_LOOSE_STRING_CHARS = (r'[^\"\\\r\n]', r'[^\0-\x1f\"\\\r\n]')
_JSON_STRING_CHAR = r'[^\0-\x1f\"\\\uD800-\uDFFF]'


def _json_grammar(schema: dict, strict: bool, any_whitespace: bool = True) -> xgr.Grammar:
    grammar = xgr.Grammar.from_json_schema(schema, strict_mode=strict, any_whitespace=any_whitespace)
    ebnf = str(grammar)
    if not any(loose in ebnf for loose in _LOOSE_STRING_CHARS):
        return grammar
    for loose in _LOOSE_STRING_CHARS:
        ebnf = ebnf.replace(loose, _JSON_STRING_CHAR)
    return xgr.Grammar.from_ebnf(ebnf)


def _triggered_tags(tag: dict, any_whitespace: bool) -> dict:
    """vLLM's structural tag in xgrammar's own format. Each schema goes in as the grammar
    `_json_grammar` builds (xgrammar's own json_schema content has neither the string fix nor
    a whitespace bound)."""
    tags = [{"type": "tag", "begin": s["begin"], "end": s["end"],
             "content": {"type": "grammar", "grammar": str(_json_grammar(s["schema"], True, any_whitespace))}}
            for s in tag["structures"]]
    return {"type": "structural_tag", "format": {"type": "triggered_tags", "triggers": tag["triggers"], "tags": tags}}


class XGrammarBackend(GrammarBackend):
    name = "xgrammar"

    def __init__(self, tokenizer, vocab_size: int, eos_token_id: int | None):
        info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=None if eos_token_id is None else [eos_token_id])
        self._stop_ids = frozenset(info.stop_token_ids)
        # The manager caches compiled grammars itself, so xgrammar's own cache is off.
        self.compiler = xgr.GrammarCompiler(info, max_threads=min(8, os.cpu_count() or 1), cache_enabled=False)
        self.batch = xgr.BatchGrammarMatcher()

    @classmethod
    def parse(cls, spec: StructuredOutputParams) -> xgr.Grammar:
        if spec.whitespace_pattern is not None:
            raise GrammarError("whitespace_pattern needs the llguidance backend")
        try:
            if spec.is_json:
                return _json_grammar(spec.schema(), strict=spec.strict and not spec.json_object,
                                     any_whitespace=not spec.disable_any_whitespace)
            if spec.structural_tag is not None:
                return xgr.Grammar.from_structural_tag(_triggered_tags(spec.tag(), not spec.disable_any_whitespace))
            if spec.regex is not None:
                return xgr.Grammar.from_regex(spec.regex)
            if spec.choice is not None:
                return xgr.Grammar.from_ebnf("root ::= " + " | ".join(json.dumps(c) for c in spec.choice))
            if "::=" in spec.grammar:
                return xgr.Grammar.from_ebnf(spec.grammar)
            return xgr.Grammar.from_lark(spec.grammar)
        except (RuntimeError, ValueError) as exc:
            raise GrammarError(error_text(exc)) from None

    @property
    def stop_token_ids(self) -> frozenset[int]:
        return self._stop_ids

    def compile(self, grammar: xgr.Grammar) -> xgr.CompiledGrammar:
        return self.compiler.compile_grammar(grammar)

    def new_matcher(self, compiled: xgr.CompiledGrammar) -> xgr.GrammarMatcher:
        return xgr.GrammarMatcher(compiled)

    def fill_bitmask(self, matchers: list, bitmask: torch.Tensor, rows: list[int]) -> None:
        self.batch.batch_fill_next_token_bitmask(matchers, bitmask, rows)

    def accept(self, matchers: list, tokens: list[int]) -> list[bool]:
        return xgr.BatchGrammarMatcher.batch_accept_token(matchers, tokens)
