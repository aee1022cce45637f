"""The guided-decoding library interface the manager drives: one subclass per library.

The split follows where the work may run: `parse` is cheap and runs where the request is
admitted (so a bad grammar is an error there), `compile` is heavy (token-mask tables over the
whole vocabulary) and runs on the manager's compile thread, and the per-step calls work on
a batch of matchers at once through the library's batch API.
"""
from __future__ import annotations

import re
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from octavo.structured_output.params import StructuredOutputParams


class GrammarError(ValueError):
    """A constraint the backend cannot use (bad schema, regex or grammar); the message says why."""


class GrammarBackend(ABC):
    """Constructed as `cls(tokenizer, vocab_size, eos_token_id)` on the compile thread (building
    the vocabulary tables is slow). Masks cover `vocab_size` ids, the model's logits width;
    ids the tokenizer lacks are never allowed."""

    name: ClassVar[str]

    @classmethod
    @abstractmethod
    def parse(cls, spec: StructuredOutputParams) -> Any:
        """The library's grammar for `spec`, validated; raises GrammarError. No tokenizer needed."""

    @property
    @abstractmethod
    def stop_token_ids(self) -> frozenset[int]:
        """Tokens that end the grammar: once one is accepted the matcher constrains no more."""

    @abstractmethod
    def compile(self, grammar: Any) -> Any:
        """The compiled grammar, shared by every matcher of the same constraint."""

    @abstractmethod
    def new_matcher(self, compiled: Any) -> Any: ...

    @abstractmethod
    def fill_bitmask(self, matchers: list, bitmask: torch.Tensor, rows: list[int]) -> None:
        """Write matcher i's allowed tokens into bitmask row rows[i] (int32, CPU)."""

    @abstractmethod
    def accept(self, matchers: list, tokens: list[int]) -> list[bool]:
        """Advance each matcher by its token; False where the grammar rejected it."""


_LOCATION = re.compile(r"^\[[\d:]+\] \S+:\d+: (Check failed: .*? is false: )?")


def error_text(exc: Exception) -> str:
    """A library's message without its C++ source location."""
    return _LOCATION.sub("", str(exc).strip()).strip()
