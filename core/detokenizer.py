"""Incremental detokenization with stop strings (the engine's per-request output text).

The engine calls :meth:`IncrementalDetokenizer.update` once per step with the request's new
token ids, reads :attr:`~IncrementalDetokenizer.output_text` (cumulative outputs) or
:meth:`~IncrementalDetokenizer.get_next_delta` (streaming) and calls
:meth:`~IncrementalDetokenizer.finish` when the request ends.

Two decoding strategies, chosen per tokenizer, both as in vLLM v1:

* Fast path (any tokenizer backed by a ``tokenizers.Tokenizer``: a transformers fast /
  ``TokenizersBackend`` tokenizer or a raw ``tokenizers.Tokenizer``): Rust
  ``tokenizers.decoders.DecodeStream``, one ``step`` call per engine step whatever the number
  of new tokens. The stream is primed with a short suffix of the prompt (4..23 tokens whose
  text has no U+FFFD, i.e. starts and ends on a character boundary) so context-sensitive
  decoders (Metaspace's leading-space strip) continue the prompt rather than restart; when
  no clean suffix exists (the prompt ends inside a multi-byte character) the stream starts
  empty. For byte-level BPE the context never changes the text, so
  ``output_text == tokenizer.decode(output_ids, skip_special_tokens=...)`` exactly.
* Slow path (python "slow" tokenizers): vLLM's prefix_offset/read_offset algorithm over
  ``convert_ids_to_tokens`` / ``convert_tokens_to_string``, with a bounded token window
  (no O(n) list copies per token).

Both paths hold back text while it ends in U+FFFD (an incomplete multi-byte character from
byte-level or byte-fallback tokens), so ``output_text`` and every delta only ever contain
whole characters. :meth:`finish` flushes what is still held (then exactly as ``decode``
renders it, i.e. as U+FFFD), so for byte-level BPE the final text equals ``decode()`` even
for invalid UTF-8. Exception (as in vLLM): tokenizers' ByteFallback decoder renders a whole run
of byte tokens as U+FFFD once any byte in it is invalid, so a complete character followed by a
stray byte token is shown as the character (already emitted, never retracted) plus U+FFFD,
where ``decode()`` gives U+FFFD for all of them; the stream restarts and does not crash.

``spaces_between_special_tokens``: honoured exactly as the tokenizer's own ``decode()``
honours it. tokenizers (the fast path) never puts spaces between added tokens and
transformers' fast ``decode`` ignores the flag, so the fast path ignores it. On the slow path
a one-time probe per tokenizer checks whether ``decode`` reacts to the flag (transformers 4.x
python tokenizers do: they decode the runs between added tokens separately and join them
with " "; transformers 5 dropped that); if so we decode the window in the same segmented way
(vLLM's ``_convert_tokens_to_string_with_added_encoders``), else we ignore the flag.

Not replicated (as in vLLM): ``clean_up_tokenization_spaces`` (transformers 5 skips it for
BPE models anyway; WordPiece/Unigram tokenizers with it on differ from ``decode`` there).

Granularity: a step's tokens are decoded together, so when a multi-token step (speculative
decoding) ends inside a character, the whole step's text waits for the next step (or finish).

Per-token cost (SmolLM2, one token per step): about 0.5 us of Python on top of the ~1 us
``DecodeStream.step`` call; stop checks add about 0.5 us per stop string. ``output_text`` is
joined lazily, so streaming via ``get_next_delta`` never copies the whole text per step.

Stop strings: each step searches only the new text plus the last ``len(stop) - 1`` characters
before it (O(new text) per step). If several stops occur, the one completed first in the text
wins (smallest end index; ties go to the one starting first) -- independent of how tokens
were chunked into steps.
"""
from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

__all__ = ["IncrementalDetokenizer"]

_REPLACEMENT = "\ufffd"
# Prompt suffix used as decoding context: between these many tokens (vLLM's numbers).
_CONTEXT_MIN_TOKENS = 4
_CONTEXT_MAX_TOKENS = 23
# Slow path: drop consumed tokens from the window once this many have piled up.
_WINDOW_TRIM = 256
_INVALID_PREFIX_ERR = "Invalid prefix"
_MAX_U32 = 2**32


# --------------------------------------------------------------------------------------
# per-tokenizer facts, computed once
# --------------------------------------------------------------------------------------

class _TokenizerInfo:
    __slots__ = ("backend", "special_ids", "added_tokens", "segmented", "vocab_len")

    def __init__(self, tokenizer: Any) -> None:
        self.backend = _backend_of(tokenizer)
        self.special_ids: frozenset[int] = frozenset()
        self.added_tokens: frozenset[str] = frozenset()
        self.segmented = False
        self.vocab_len = 0
        if self.backend is not None:
            return
        # slow path
        self.special_ids = frozenset(getattr(tokenizer, "all_special_ids", ()) or ())
        added = dict(tokenizer.get_added_vocab()) if hasattr(tokenizer, "get_added_vocab") else {}
        self.added_tokens = frozenset(added)
        self.vocab_len = len(tokenizer)
        self.segmented = bool(added) and _decode_honours_spaces_flag(tokenizer, added, self.vocab_len)


_INFO_CACHE: "weakref.WeakKeyDictionary[Any, _TokenizerInfo]" = weakref.WeakKeyDictionary()


def _info_for(tokenizer: Any) -> _TokenizerInfo:
    try:
        info = _INFO_CACHE.get(tokenizer)
    except TypeError:  # not weak-referenceable / hashable: compute every time
        return _TokenizerInfo(tokenizer)
    if info is None:
        info = _TokenizerInfo(tokenizer)
        try:
            _INFO_CACHE[tokenizer] = info
        except TypeError:
            pass
    return info


def _backend_of(tokenizer: Any):
    """The ``tokenizers.Tokenizer`` behind ``tokenizer``, or None for a slow tokenizer."""
    try:
        from tokenizers import Tokenizer
    except ImportError:  # pragma: no cover - tokenizers is a hard dependency
        return None
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    if getattr(tokenizer, "is_fast", False):
        backend = getattr(tokenizer, "_tokenizer", None)
        if isinstance(backend, Tokenizer):
            return backend
    return None


def _decode_honours_spaces_flag(tokenizer: Any, added: dict[str, int], vocab_len: int) -> bool:
    """Whether ``tokenizer.decode`` puts spaces between added tokens when asked to."""
    added_ids = set(added.values())
    special = next(iter(added_ids))
    regular = next((i for i in range(min(vocab_len, 4096)) if i not in added_ids), None)
    if regular is None:
        return False
    probe = [special, regular, special]
    try:
        with_spaces = tokenizer.decode(probe, skip_special_tokens=False, spaces_between_special_tokens=True)
        without = tokenizer.decode(probe, skip_special_tokens=False, spaces_between_special_tokens=False)
    except Exception:
        return False
    return with_spaces != without


def _prompt_context(decode, prompt_ids: Sequence[int]) -> list[int]:
    """A short prompt suffix that decodes cleanly (no U+FFFD), or [] if there is none."""
    n = len(prompt_ids)
    for k in range(min(_CONTEXT_MIN_TOKENS, n), min(n, _CONTEXT_MAX_TOKENS) + 1):
        if k == 0:
            break
        ctx = [int(i) for i in prompt_ids[n - k:]]
        try:
            text = decode(ctx)
        except Exception:
            return []
        if _REPLACEMENT not in text:
            return ctx
    return []


# --------------------------------------------------------------------------------------
# decoding strategies: step(ids) -> new text (whole characters only); flush() -> the rest
# --------------------------------------------------------------------------------------

class _StreamDecoder:
    """tokenizers' DecodeStream (vLLM's FastIncrementalDetokenizer)."""

    __slots__ = ("tok", "skip", "stream", "ctx", "pending")

    def __init__(self, backend: Any, prompt_ids: Sequence[int], skip_special_tokens: bool) -> None:
        self.tok = backend
        self.skip = skip_special_tokens
        ctx = _prompt_context(lambda ids: backend.decode(ids, skip_special_tokens=skip_special_tokens), prompt_ids)
        self.stream = self._new_stream(ctx)
        # ids whose text is the stream's current prefix / ids fed since the last emitted chunk
        self.ctx: list[int] = ctx
        self.pending: list[int] = []

    def _new_stream(self, ctx: list[int]):
        from tokenizers.decoders import DecodeStream

        if not ctx:
            return DecodeStream(skip_special_tokens=self.skip)
        try:
            return DecodeStream(ids=ctx, skip_special_tokens=self.skip)
        except TypeError:  # tokenizers < 0.22: no `ids`; prime by stepping
            stream = DecodeStream(skip_special_tokens=self.skip)
            for i in ctx:
                stream.step(self.tok, i)
            return stream

    def step(self, ids: list[int]) -> str:
        try:
            # a plain int is about twice as fast to pass as a one-element list
            text = self.stream.step(self.tok, ids[0] if len(ids) == 1 else ids)
        except Exception as e:  # noqa: BLE001 - classified in _step_slowly
            return self._step_slowly(ids, e)
        return self._account(text, ids)

    def _account(self, text: str | None, ids: list[int]) -> str:
        """Track which ids the stream's prefix / pending text correspond to (for flush)."""
        if text is None:
            self.pending += ids
            return ""
        if self.pending:
            self.pending += ids
            self.ctx = self.pending
            self.pending = []
        else:
            self.ctx = list(ids)
        return text

    def _step_slowly(self, ids: list[int], err: Exception) -> str:
        if str(err).startswith(_INVALID_PREFIX_ERR):
            return self._restart(list(ids))
        if not isinstance(err, (TypeError, OverflowError, ValueError)):
            raise err
        # Old tokenizers (int-only step) or ids that cannot be token ids (negative, > u32,
        # non-int types): one id at a time, dropping impossible ids (decode() could not take
        # them either).
        out: list[str] = []
        for i in ids:
            try:
                i = int(i)
            except (TypeError, ValueError):
                continue
            if not 0 <= i < _MAX_U32:
                continue
            try:
                out.append(self._account(self.stream.step(self.tok, i), [i]))
            except Exception as e:  # noqa: BLE001
                if not str(e).startswith(_INVALID_PREFIX_ERR):
                    raise
                out.append(self._restart([i]))
        return "".join(out)

    def _restart(self, ids: list[int]) -> str:
        # The decoder's output was not prefix-stable (vLLM issue 17448). Restart the stream
        # without context, re-feeding the ids whose text is still pending.
        from tokenizers.decoders import DecodeStream

        ids = self.pending + ids
        self.pending = []
        self.ctx = []
        self.stream = DecodeStream(skip_special_tokens=self.skip)
        try:
            text = self.stream.step(self.tok, ids)
        except TypeError:  # int-only step
            parts = [self.stream.step(self.tok, i) for i in ids]
            text = "".join(p for p in parts if p) if any(p is not None for p in parts) else None
        return self._account(text, ids)

    def flush(self) -> str:
        if not self.pending:
            return ""
        skip = self.skip
        full = self.tok.decode(self.ctx + self.pending, skip_special_tokens=skip)
        prefix = self.tok.decode(self.ctx, skip_special_tokens=skip) if self.ctx else ""
        pending = self.pending
        self.ctx = self.ctx + pending
        self.pending = []
        if full.startswith(prefix):
            return full[len(prefix):]
        # not prefix-stable (see _restart): render the pending ids on their own
        return self.tok.decode(pending, skip_special_tokens=skip)


class _OffsetDecoder:
    """vLLM's prefix_offset/read_offset incremental detokenization for slow tokenizers.

    ``tokens[prefix_offset:read_offset]`` is the context whose text was already emitted,
    ``tokens[read_offset:]`` the tokens whose text is not emitted yet.
    """

    __slots__ = ("tokenizer", "info", "skip", "spaces", "tokens", "prefix_offset", "read_offset",
                 "prefix_text")

    def __init__(self, tokenizer: Any, info: _TokenizerInfo, prompt_ids: Sequence[int],
                 skip_special_tokens: bool, spaces_between_special_tokens: bool) -> None:
        self.tokenizer = tokenizer
        self.info = info
        self.skip = skip_special_tokens
        self.spaces = spaces_between_special_tokens
        self.tokens: list[str] = []
        ctx = _prompt_context(lambda ids: self._to_string(self._append_tokens(ids, [])), prompt_ids)
        self._append_tokens(ctx, self.tokens)
        self.prefix_offset = 0
        self.read_offset = len(self.tokens)
        self.prefix_text: str | None = None

    def _append_tokens(self, ids: Sequence[int], out: list[str]) -> list[str]:
        info = self.info
        convert = self.tokenizer.convert_ids_to_tokens
        for i in ids:
            if self.skip and i in info.special_ids:
                continue
            if 0 <= i < info.vocab_len:
                out.append(convert(int(i)) or "")
            else:
                out.append("")
        return out

    def _to_string(self, tokens: list[str]) -> str:
        if not tokens:
            return ""
        if not self.info.segmented:
            return self.tokenizer.convert_tokens_to_string(tokens)
        # legacy (transformers 4.x python tokenizers): runs between added tokens are decoded
        # separately and everything is joined with " " if spaces_between_special_tokens.
        added = self.info.added_tokens
        convert = self.tokenizer.convert_tokens_to_string
        parts: list[str] = []
        run: list[str] = []
        for t in tokens:
            if t in added:
                if run:
                    parts.append(convert(run))
                    run = []
                parts.append(t)
            else:
                run.append(t)
        if run:
            parts.append(convert(run))
        return (" " if self.spaces else "").join(parts)

    def step(self, ids: list[int]) -> str:
        tokens = self.tokens
        before = len(tokens)
        self._append_tokens(ids, tokens)
        if len(tokens) == before:
            return ""
        return self._emit(final=False)

    def _emit(self, final: bool) -> str:
        tokens = self.tokens
        if self.prefix_text is None:
            self.prefix_text = self._to_string(tokens[self.prefix_offset:self.read_offset])
        prefix_text = self.prefix_text
        new_text = self._to_string(tokens[self.prefix_offset:])
        if len(new_text) <= len(prefix_text) or (not final and new_text.endswith(_REPLACEMENT)):
            # nothing new, or a possibly unfinished multi-byte character at the end
            return ""
        self.prefix_offset = self.read_offset
        self.read_offset = len(tokens)
        self.prefix_text = None
        if self.prefix_offset >= _WINDOW_TRIM:
            del tokens[:self.prefix_offset]
            self.read_offset -= self.prefix_offset
            self.prefix_offset = 0
        return new_text[len(prefix_text):]

    def flush(self) -> str:
        if self.read_offset >= len(self.tokens):
            return ""
        return self._emit(final=True)


# --------------------------------------------------------------------------------------
# the per-request detokenizer
# --------------------------------------------------------------------------------------

class IncrementalDetokenizer:
    """Per-request incremental detokenizer with stop-string handling.

    Args:
        tokenizer: a transformers tokenizer (fast or slow) or a ``tokenizers.Tokenizer``.
        prompt_token_ids: the prompt; its last few tokens are decoding context only.
        skip_special_tokens / spaces_between_special_tokens: as in ``tokenizer.decode``
            (see the module docstring for the latter).
        stop: stop strings. After a match ``update`` returns it, ``output_text`` is cut
            before it (or after it with ``include_stop_str_in_output``) and the
            detokenizer is finished.
        stream_holdback: ``get_next_delta`` withholds a tail of the text that could still
            be the beginning of a stop string (only when stops exist and are excluded from
            the output), so a streamed delta never contains text that a later stop match
            removes. Only the longest suffix that is a prefix of some stop string is held
            (at most ``len(longest stop) - 1`` characters).
        min_tokens: stop strings completed within the first ``min_tokens`` output tokens
            do not count (vLLM semantics: a match must end in text of a later token).
    """

    def __init__(self, tokenizer: Any, prompt_token_ids: Sequence[int], *,
                 skip_special_tokens: bool = True, spaces_between_special_tokens: bool = True,
                 stop: Sequence[str] = (), include_stop_str_in_output: bool = False,
                 stream_holdback: bool = False, min_tokens: int = 0) -> None:
        if isinstance(stop, str):
            stop = [stop]
        if any(not s for s in stop):
            raise ValueError("stop strings must not be empty")
        info = _info_for(tokenizer)
        if info.backend is not None:
            self._decoder: _StreamDecoder | _OffsetDecoder = _StreamDecoder(
                info.backend, prompt_token_ids, skip_special_tokens)
        else:
            self._decoder = _OffsetDecoder(tokenizer, info, prompt_token_ids, skip_special_tokens,
                                           spaces_between_special_tokens)
        self.stop: tuple[str, ...] = tuple(dict.fromkeys(stop))
        self.include_stop_str_in_output = include_stop_str_in_output
        self.min_tokens = min_tokens
        self._tail_len = max((len(s) for s in self.stop), default=1) - 1
        self._holdback = bool(stream_holdback and self.stop and not include_stop_str_in_output)

        self.num_output_tokens = 0
        self.finished = False
        self.stop_reason: str | None = None  # the stop string that ended the request
        # output text = _text + "".join(_parts), materialized lazily (no O(n) copy per step)
        self._text = ""
        self._parts: list[str] = []
        self._len = 0
        self._tail = ""  # last _tail_len characters (only maintained when there are stops)
        # streaming: text not yet returned by get_next_delta = _held + "".join(_unsent)
        self._sent = 0
        self._held = ""
        self._unsent: list[str] = []

    # ---- text ---------------------------------------------------------------------------

    @property
    def output_text(self) -> str:
        if self._parts:
            self._text += "".join(self._parts)
            self._parts.clear()
        return self._text

    def _append(self, text: str, searchable: int) -> str | None:
        """Add decoded text; check stops ending in its last `searchable` chars."""
        old_len = self._len
        self._parts.append(text)
        self._unsent.append(text)
        self._len = old_len + len(text)
        if not self.stop:
            return None
        window = self._tail + text
        if self._tail_len:
            self._tail = window[-self._tail_len:]
        if searchable <= 0:
            return None
        region = len(window) - searchable  # a match must end after this index
        best: tuple[int, int, str] | None = None
        for s in self.stop:
            idx = window.find(s, max(0, region - len(s) + 1))
            if idx >= 0:
                key = (idx + len(s), idx, s)
                if best is None or key[:2] < best[:2]:
                    best = key
        if best is None:
            return None
        end, idx, s = best
        base = old_len - (len(window) - len(text))  # global index of window[0]
        self._truncate(base + (end if self.include_stop_str_in_output else idx))
        self.stop_reason = s
        self.finished = True
        return s

    def _truncate(self, cut: int) -> None:
        if cut >= self._len:
            return
        self._text = self.output_text[:cut]
        self._len = cut
        unsent = self._held + "".join(self._unsent)
        self._unsent.clear()
        # Without holdback a streamed delta may already hold text past `cut`; it cannot be
        # taken back, the output simply stops there.
        self._held = unsent[:max(0, cut - self._sent)]

    # ---- engine API ---------------------------------------------------------------------

    def update(self, new_token_ids: Sequence[int], stop_terminated: bool = False) -> str | None:
        """Append this step's tokens; return the matched stop string, else None.

        ``stop_terminated``: the last id is a stop token (EOS / stop_token_ids); as in vLLM
        its text is not added unless ``include_stop_str_in_output``.
        """
        if self.finished or len(new_token_ids) == 0:
            return None
        ids = new_token_ids if type(new_token_ids) is list else list(new_token_ids)
        n_before = self.num_output_tokens
        self.num_output_tokens = n_before + len(ids)
        if stop_terminated and not self.include_stop_str_in_output:
            ids = ids[:-1]
            if not ids:
                return None
        decoder = self._decoder
        if self.min_tokens <= n_before:  # the common case
            text = decoder.step(ids)
            return self._append(text, len(text)) if text else None
        # text of the first min_tokens tokens cannot complete a stop string
        k = self.min_tokens - n_before
        if k >= len(ids):
            text = decoder.step(ids)
            return self._append(text, 0) if text else None
        head = decoder.step(ids[:k])
        if head:
            self._append(head, 0)
        text = decoder.step(ids[k:])
        return self._append(text, len(text)) if text else None

    def get_next_delta(self) -> str:
        """Text not returned before (holding back a possible stop-string start, see class doc)."""
        if self._unsent:
            unsent = self._held + "".join(self._unsent) if self._held else "".join(self._unsent)
            self._unsent.clear()
        else:
            unsent = self._held
        if not unsent:
            return ""
        keep = self._holdback_len(unsent) if (self._holdback and not self.finished) else 0
        if keep:
            delta, self._held = unsent[:-keep], unsent[-keep:]
        else:
            delta, self._held = unsent, ""
        self._sent += len(delta)
        return delta

    def _holdback_len(self, s: str) -> int:
        """Length of the longest suffix of `s` that is a proper prefix of a stop string."""
        n = len(s)
        lo = max(0, n - self._tail_len)
        best = n
        for stop in self.stop:
            first = stop[0]
            i = s.find(first, lo, best)
            while i >= 0:
                if stop.startswith(s[i:]):
                    best = i
                    break
                i = s.find(first, i + 1, best)
        return n - best

    def finish(self) -> None:
        """The request ended: flush text still held by the decoder, release held-back text."""
        if self.finished:
            return
        text = self._decoder.flush()
        if text:
            searchable = len(text) if self.num_output_tokens > self.min_tokens else 0
            self._append(text, searchable)
        self.finished = True
