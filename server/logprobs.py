"""The engine's per-position logprobs in the shapes of the completions and chat APIs."""
from __future__ import annotations

import functools
import re
from typing import Any

from octavo.outputs import Logprob, PositionLogprobs

_FLOOR = -9999.0  # JSON has no -inf


def _lp(value: float) -> float:
    return max(value, _FLOOR)


@functools.lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """Byte-level BPE's printable stand-ins for bytes (GPT-2's bytes_to_unicode), reversed."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")  # SentencePiece byte fallback


class TokenTexts:
    """How logprobs name a token: its text, or `bytes:\\xe2\\x80` when its bytes are not valid
    UTF-8 on their own (as OpenAI writes them; several such tokens would all decode to U+FFFD and
    collide as top_logprobs keys), or `token_id:N` with vLLM's return_tokens_as_token_ids."""

    def __init__(self, tokenizer, as_token_ids: bool = False):
        self.tokenizer = tokenizer
        self.as_token_ids = as_token_ids
        self._cache: dict[int, tuple[str, bytes, int]] = {}

    def text(self, tid: int) -> str:
        return f"token_id:{tid}" if self.as_token_ids else self._lookup(tid)[0]

    def bytes(self, tid: int) -> list[int]:
        return list(self._lookup(tid)[1])

    def length(self, tid: int) -> int:
        """Characters the token adds to the decoded text (for text_offset)."""
        return self._lookup(tid)[2]

    def _lookup(self, tid: int) -> tuple[str, bytes, int]:
        entry = self._cache.get(tid)
        if entry is None:
            entry = self._cache[tid] = self._render(tid)
        return entry

    def _render(self, tid: int) -> tuple[str, bytes, int]:
        text = self.tokenizer.decode([tid])
        raw = _raw_bytes(self.tokenizer.convert_ids_to_tokens(tid)) if "\ufffd" in text else None
        if raw is None:  # valid UTF-8 (or the vocabulary really holds U+FFFD)
            return text, text.encode("utf-8"), len(text)
        try:
            return raw.decode("utf-8"), raw, len(text)
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{b:02x}" for b in raw), raw, len(text)


def _raw_bytes(piece: str | None) -> bytes | None:
    """A vocabulary entry's bytes: byte-level BPE (GPT-2 style) or a SentencePiece byte token."""
    if not piece:
        return None
    if m := _BYTE_TOKEN.match(piece):
        return bytes([int(m.group(1), 16)])
    table = _byte_decoder()
    if all(ch in table for ch in piece):
        return bytes(table[ch] for ch in piece)
    return None


def _by_rank(position: PositionLogprobs, k: int) -> list[tuple[int, Logprob]]:
    ranked = sorted(position.items(), key=lambda kv: kv[1].rank if kv[1].rank is not None else 0)
    return ranked[:k]


class CompletionLogprobs:
    """Accumulates `{"tokens", "token_logprobs", "top_logprobs", "text_offset"}` (legacy API)."""

    def __init__(self, texts: TokenTexts, offset: int = 0):
        self.texts = texts
        self.offset = offset

    def add(self, token_ids: list[int], positions: list[PositionLogprobs | None]) -> dict[str, list]:
        out: dict[str, list] = {"text_offset": [], "token_logprobs": [], "tokens": [], "top_logprobs": []}
        for tid, position in zip(token_ids, positions):
            if position is None:  # the first prompt token has no logprob
                out["token_logprobs"].append(None)
                out["top_logprobs"].append(None)
            else:
                entry = position.get(tid)
                out["token_logprobs"].append(_lp(entry.logprob) if entry is not None else None)
                out["top_logprobs"].append({self.texts.text(t): _lp(e.logprob)
                                            for t, e in _by_rank(position, len(position))})
            out["tokens"].append(self.texts.text(tid))
            out["text_offset"].append(self.offset)
            self.offset += self.texts.length(tid)
        return out


def merge_completion(a: dict[str, list] | None, b: dict[str, list]) -> dict[str, list]:
    if a is None:
        return b
    return {key: a[key] + b[key] for key in b}


def chat_logprobs(texts: TokenTexts, token_ids: list[int], positions: list[PositionLogprobs],
                  top_logprobs: int) -> list[dict[str, Any]]:
    """`logprobs.content` entries: token, logprob, bytes and the top `top_logprobs` alternatives."""
    content = []
    for tid, position in zip(token_ids, positions):
        entry = position.get(tid)
        tops = [{"token": texts.text(other), "logprob": _lp(e.logprob), "bytes": texts.bytes(other)}
                for other, e in _by_rank(position, top_logprobs)]
        content.append({"token": texts.text(tid), "logprob": _lp(entry.logprob) if entry is not None else _FLOOR,
                        "bytes": texts.bytes(tid), "top_logprobs": tops})
    return content


def prompt_logprobs(positions: list[PositionLogprobs | None] | None) -> list[dict[str, Any] | None] | None:
    """vLLM's `prompt_logprobs`: per prompt position None or {token id: {logprob, rank, decoded_token}}."""
    if positions is None:
        return None
    return [None if p is None else {str(tid): {"logprob": _lp(e.logprob), "rank": e.rank,
                                               "decoded_token": e.decoded_token} for tid, e in p.items()}
            for p in positions]
