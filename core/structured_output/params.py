"""What a request asks its output to match: one JSON schema, regex, choice or grammar."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from octavo.sampling_params import SamplingParamError

BACKENDS = ("xgrammar", "llguidance")
_ALIASES = {"guidance": "llguidance"}  # vLLM's name for the llguidance backend
_KINDS = ("json", "json_object", "regex", "choice", "grammar", "structural_tag")


@dataclass(slots=True)
class StructuredOutputParams:
    """Exactly one constraint, as vLLM's StructuredOutputsParams.

    `grammar` is EBNF (GBNF, `root ::= ...`) or Lark (`start: ...`); both backends take both.
    `structural_tag` (vLLM's form, a dict or its JSON text): free text until one of `triggers`
    appears, then one of `structures` (`begin`, a JSON `schema`, `end`) is forced; tool calls
    inside a reply are made valid this way.
    `strict`: JSON objects that list their properties get no others unless the schema says
    so (xgrammar's strict_mode; for llguidance, additionalProperties defaults to false).
    `disable_any_whitespace`: JSON output is compact (one space after ',' and ':' at most), so
    a weak model cannot spend its tokens on whitespace.
    `whitespace_pattern` (llguidance only): the regex JSON whitespace must match.
    `backend` overrides the engine's --guided-decoding-backend for this request.
    `reasoning_end_ids`: the token ids that end a reasoning model's think block; the
    constraint applies after them (the reasoning stays free). Not part of the grammar's identity.
    """

    json: dict[str, Any] | str | None = None
    json_object: bool = False
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    structural_tag: dict[str, Any] | str | None = None
    whitespace_pattern: str | None = None
    disable_any_whitespace: bool = False
    backend: str | None = None
    strict: bool = True
    reasoning_end_ids: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        self.backend = _ALIASES.get(self.backend, self.backend)
        kinds = [k for k in _KINDS if getattr(self, k) not in (None, False)]
        _check(len(kinds) == 1, "structured_outputs",
               f"needs exactly one of {', '.join(_KINDS)}, got {', '.join(kinds) or 'none'}")
        _check(self.backend is None or self.backend in BACKENDS, "backend",
               f"must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        _check(self.whitespace_pattern is None or self.is_json, "whitespace_pattern",
               "applies to JSON output only")
        _check(self.whitespace_pattern is None or not self.disable_any_whitespace, "whitespace_pattern",
               "cannot be combined with disable_any_whitespace")
        if self.reasoning_end_ids is not None:
            self.reasoning_end_ids = tuple(self.reasoning_end_ids)

    @property
    def kind(self) -> str:
        return next(k for k in _KINDS if getattr(self, k) not in (None, False))

    @property
    def is_json(self) -> bool:
        return self.json is not None or self.json_object

    def schema(self) -> dict[str, Any]:
        """The JSON schema as a dict (json_object: any object); raises ValueError for bad JSON."""
        if self.json_object:
            return {"type": "object"}
        schema = json.loads(self.json) if isinstance(self.json, str) else self.json
        if not isinstance(schema, dict):
            raise ValueError(f"a JSON schema must be an object, got {type(schema).__name__}")
        return schema

    def tag(self) -> dict[str, Any]:
        """The structural tag as a dict: {"triggers": [...], "structures": [{"begin", "schema", "end"}]}."""
        tag = json.loads(self.structural_tag) if isinstance(self.structural_tag, str) else self.structural_tag
        if not isinstance(tag, dict) or not isinstance(tag.get("triggers"), list) \
                or not isinstance(tag.get("structures"), list) or not tag["structures"]:
            raise ValueError('a structural tag is {"triggers": [...], "structures": [{"begin", "schema", "end"}, ...]}')
        for s in tag["structures"]:
            if not isinstance(s, dict) or not all(isinstance(s.get(k), str) for k in ("begin", "end")) \
                    or not isinstance(s.get("schema"), dict):
                raise ValueError("every structure needs string 'begin' and 'end' and an object 'schema'")
            if not any(s["begin"].startswith(t) for t in tag["triggers"]):
                raise ValueError(f"structure begin {s['begin']!r} starts with none of the triggers")
        return tag

    def key(self) -> tuple:
        """Hashable identity of the constraint (backend aside), for the compiled-grammar cache."""
        value = getattr(self, self.kind)
        if isinstance(value, (dict, list)):
            value = json.dumps(value, sort_keys=True)
        return self.kind, value, self.whitespace_pattern, self.strict, self.disable_any_whitespace


def _check(ok: bool, param: str, message: str) -> None:
    if not ok:
        raise SamplingParamError(f"structured_outputs.{param}" if param != "structured_outputs" else param,
                                 message)
