"""Guided decoding: outputs constrained to a JSON schema, regex, choice list or grammar.

`StructuredOutputParams` on `SamplingParams.structured_outputs` says what to match;
`StructuredOutputManager` compiles it (xgrammar by default, or llguidance) and fills the
per-step token bitmask the sampler applies. The libraries load only when first used.
"""
from octavo.structured_output.backend import GrammarError
from octavo.structured_output.manager import GrammarState, StructuredOutputManager
from octavo.structured_output.params import BACKENDS, StructuredOutputParams

__all__ = ["BACKENDS", "GrammarError", "GrammarState", "StructuredOutputManager", "StructuredOutputParams"]
