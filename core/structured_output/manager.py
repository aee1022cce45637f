"""Grammars for the engine: compiled off the step loop and cached, one matcher per sequence.

Flow (vLLM v1's): `submit` parses a request's constraint where it is admitted (a bad one is
an error there) and compiles it on a background thread; the scheduler skips the request
until `GrammarState.ready()`. Each step, `bitmask` fills one row per guided request that
samples (one batch call per library) and, once the token is sampled, `accept` advances the
matchers. A matcher lives on its request: it survives preemption (the tokens it has seen
are not sampled again) and goes with the request when it ends.
"""
from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch

from octavo.structured_output.backend import GrammarBackend, GrammarError
from octavo.structured_output.params import StructuredOutputParams

logger = logging.getLogger("octavo")

CACHE_SIZE = 256  # compiled grammars kept (least recently used go first)
_NOUNS = {"json": "JSON schema", "json_object": "JSON object constraint", "regex": "regex",
          "choice": "choice list", "grammar": "grammar"}


def backend_class(name: str) -> type[GrammarBackend]:
    """Imported on first use: a library nobody asks for is never loaded."""
    if name == "xgrammar":
        from octavo.structured_output.xgrammar_backend import XGrammarBackend

        return XGrammarBackend
    from octavo.structured_output.llguidance_backend import LLGuidanceBackend

    return LLGuidanceBackend


@dataclass(frozen=True, slots=True)
class CompiledGrammar:
    backend: GrammarBackend
    grammar: Any


@dataclass(slots=True, eq=False)
class GrammarState:
    """One sequence's grammar: the compile future (shared by a request's n sequences), then
    its own matcher."""

    future: cf.Future
    reasoning_end: tuple[int, ...] | None = None  # the constraint starts after these output tokens
    backend: GrammarBackend | None = None
    matcher: Any = None
    terminated: bool = False  # a stop token was accepted: nothing more to constrain

    @property
    def active(self) -> bool:
        """Constrains the next token: past the reasoning, and not yet at its stop token."""
        return self.reasoning_end is None and not self.terminated

    def end_reasoning(self, token_ids: list[int], num_output_tokens: int) -> None:
        """Called with each new token while reasoning: the constraint starts once the output
        ends with `reasoning_end` (the tokens after it are the first it sees)."""
        end = self.reasoning_end
        if num_output_tokens >= len(end) and tuple(token_ids[-len(end):]) == end:
            self.reasoning_end = None

    def ready(self) -> bool:
        """Compiled (the matcher is made on first call); False while compiling or if it failed."""
        if self.matcher is None:
            if not self.future.done() or _failed(self.future):
                return False
            compiled: CompiledGrammar = self.future.result()
            self.backend, self.matcher = compiled.backend, compiled.backend.new_matcher(compiled.grammar)
        return True

    @property
    def failed(self) -> bool:
        return _failed(self.future)


def _failed(future: cf.Future) -> bool:
    return future.done() and future.exception() is not None


class StructuredOutputManager:
    def __init__(self, default_backend: str, tokenizer, vocab_size: int, eos_token_id: int | None):
        self.default_backend = default_backend
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.eos_token_id = eos_token_id
        self.bitmask_width = (vocab_size + 31) // 32
        self._backends: dict[str, GrammarBackend] = {}
        self._cache: OrderedDict[tuple, cf.Future] = OrderedDict()
        self._pending: set[cf.Future] = set()
        self._lock = threading.Lock()
        self._executor: cf.ThreadPoolExecutor | None = None

    # ------------------------------------------------------------------ admission (any thread)

    def submit(self, spec: StructuredOutputParams) -> cf.Future:
        """Validate `spec` now (GrammarError if it is bad), compile it in the background.

        Returns a future of the CompiledGrammar; identical constraints share one.
        """
        name = spec.backend or self.default_backend
        key = (name, spec.key())
        with self._lock:
            future = self._cache.get(key)
            if future is not None and not _failed(future):
                self._cache.move_to_end(key)
                return future
        try:
            _check_choice(spec.choice)
            grammar = backend_class(name).parse(spec)
        except GrammarError as exc:
            raise GrammarError(f"invalid {_NOUNS[spec.kind]} for {name}: {exc}") from None
        with self._lock:
            if self._executor is None:
                self._executor = cf.ThreadPoolExecutor(1, thread_name_prefix="octavo-grammar")
            future = self._cache[key] = self._executor.submit(self._compile, name, grammar)
            self._pending.add(future)
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        future.add_done_callback(self._pending.discard)
        return future

    def _compile(self, name: str, grammar: Any) -> CompiledGrammar:
        backend = self._backends.get(name)
        if backend is None:  # the vocabulary tables, once per library (the compile thread is the only writer)
            backend = self._backends[name] = backend_class(name)(self.tokenizer, self.vocab_size,
                                                                  self.eos_token_id)
        try:
            return CompiledGrammar(backend, backend.compile(grammar))
        except Exception as exc:
            logger.warning("grammar compilation failed: %s", exc)
            raise

    def wait_for_compile(self, timeout: float) -> None:
        """Block until a pending compilation finishes or `timeout` passes (an idle engine's wait)."""
        pending = list(self._pending)
        if pending:
            cf.wait(pending, timeout=timeout, return_when=cf.FIRST_COMPLETED)

    def shutdown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ per step (engine thread)

    def bitmask(self, states: list[GrammarState]) -> torch.Tensor:
        """int32 [len(states), ceil(vocab / 32)]: bit j of word k set = token 32k + j allowed."""
        bitmask = torch.full((len(states), self.bitmask_width), -1, dtype=torch.int32)
        for backend, rows in _by_backend(states).items():
            backend.fill_bitmask([states[i].matcher for i in rows], bitmask, rows)
        return bitmask

    def accept(self, states: list[GrammarState], tokens: list[int]) -> None:
        """Advance each sequence's matcher by its sampled token."""
        for backend, rows in _by_backend(states).items():
            toks = [tokens[i] for i in rows]
            for i, ok, token in zip(rows, backend.accept([states[i].matcher for i in rows], toks), toks):
                if not ok:
                    logger.warning("the grammar rejected sampled token %d; the output may not match it", token)
                states[i].terminated = token in backend.stop_token_ids


def _check_choice(choice: list[str] | None) -> None:
    if choice is not None and not (choice and all(isinstance(c, str) and c for c in choice)):
        raise GrammarError("it must hold at least one string, and no empty one")


def _by_backend(states: list[GrammarState]) -> dict[GrammarBackend, list[int]]:
    groups: dict[GrammarBackend, list[int]] = {}
    for i, state in enumerate(states):
        groups.setdefault(state.backend, []).append(i)
    return groups

