"""The engine's per-position logprobs in the shapes of the completions and chat APIs."""
from __future__ import annotations

from typing import Any

from octavo.outputs import Logprob, PositionLogprobs

_FLOOR = -9999.0  # JSON has no -inf


def _lp(value: float) -> float:
    return max(value, _FLOOR)


def _text(tokenizer, tid: int, entry: Logprob | None) -> str:
    if entry is not None and entry.decoded_token is not None:
        return entry.decoded_token
    return tokenizer.decode([tid])


def _by_rank(position: PositionLogprobs, k: int) -> list[tuple[int, Logprob]]:
    ranked = sorted(position.items(), key=lambda kv: kv[1].rank if kv[1].rank is not None else 0)
    return ranked[:k]


class CompletionLogprobs:
    """Accumulates `{"tokens", "token_logprobs", "top_logprobs", "text_offset"}` (legacy API)."""

    def __init__(self, tokenizer, offset: int = 0):
        self.tokenizer = tokenizer
        self.offset = offset

    def add(self, token_ids: list[int], positions: list[PositionLogprobs | None]) -> dict[str, list]:
        out: dict[str, list] = {"text_offset": [], "token_logprobs": [], "tokens": [], "top_logprobs": []}
        for tid, position in zip(token_ids, positions):
            if position is None:  # the first prompt token has no logprob
                text = self.tokenizer.decode([tid])
                out["token_logprobs"].append(None)
                out["top_logprobs"].append(None)
            else:
                entry = position.get(tid)
                text = _text(self.tokenizer, tid, entry)
                out["token_logprobs"].append(_lp(entry.logprob) if entry is not None else None)
                out["top_logprobs"].append({_text(self.tokenizer, t, e): _lp(e.logprob)
                                            for t, e in _by_rank(position, len(position))})
            out["tokens"].append(text)
            out["text_offset"].append(self.offset)
            self.offset += len(text)
        return out


def merge_completion(a: dict[str, list] | None, b: dict[str, list]) -> dict[str, list]:
    if a is None:
        return b
    return {key: a[key] + b[key] for key in b}


def chat_logprobs(tokenizer, token_ids: list[int], positions: list[PositionLogprobs],
                  top_logprobs: int) -> list[dict[str, Any]]:
    """`logprobs.content` entries: token, logprob, bytes and the top `top_logprobs` alternatives."""
    content = []
    for tid, position in zip(token_ids, positions):
        entry = position.get(tid)
        text = _text(tokenizer, tid, entry)
        tops = [{"token": (t := _text(tokenizer, other, e)), "logprob": _lp(e.logprob),
                 "bytes": list(t.encode("utf-8"))} for other, e in _by_rank(position, top_logprobs)]
        content.append({"token": text, "logprob": _lp(entry.logprob) if entry is not None else _FLOOR,
                        "bytes": list(text.encode("utf-8")), "top_logprobs": tops})
    return content


def prompt_logprobs(positions: list[PositionLogprobs | None] | None) -> list[dict[str, Any] | None] | None:
    """vLLM's `prompt_logprobs`: per prompt position None or {token id: {logprob, rank, decoded_token}}."""
    if positions is None:
        return None
    return [None if p is None else {str(tid): {"logprob": _lp(e.logprob), "rank": e.rank,
                                               "decoded_token": e.decoded_token} for tid, e in p.items()}
            for p in positions]
