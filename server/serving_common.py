"""Small pieces the endpoints share: ids, SSE framing, usage, prompt checks."""
from __future__ import annotations

import difflib
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import StreamingResponse

from octavo.server.errors import bad_request, from_exception
from octavo.server.protocol import OpenAIBaseModel

logger = logging.getLogger("octavo.server")

DONE = "data: [DONE]\n\n"


_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def new_request_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def request_id_for(raw: Request, prefix: str) -> str:
    """`prefix-<the client's X-Request-Id>` (as vLLM), or `prefix-<random>` without one."""
    given = raw.headers.get("x-request-id")
    if given is None:
        return new_request_id(prefix)
    if not _CLIENT_REQUEST_ID.fullmatch(given):
        raise bad_request("the X-Request-Id header must be 1 to 128 letters, digits or '.', '_', ':', '-'",
                          "x-request-id")
    return f"{prefix}-{given}"


def sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


def sse_chunk(object_name: str, request_id: str, created: int, model: str, choices: list[dict],
              usage_info: dict | None = None) -> str:
    """One streamed chunk in OpenAI's shape; usage only when asked for."""
    obj = {"id": request_id, "object": object_name, "created": created, "model": model, "choices": choices}
    if usage_info is not None:
        obj["usage"] = usage_info
    return sse(obj)


def sse_error(exc: BaseException, request_id: str) -> str:
    return sse(from_exception(exc, request_id).body())


def streaming_response(body: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(body, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int | None = None) -> dict:
    out = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
           "total_tokens": prompt_tokens + completion_tokens}
    if cached_tokens is not None:
        out["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
    return out


def warn_unknown_fields(req: OpenAIBaseModel, endpoint: str) -> None:
    """Unknown fields are accepted (OpenAI's clients send extras); one that looks like a
    misspelled known field says so, since the request then runs without it."""
    fields = req.unknown_fields()
    if not fields:
        return
    known = list(type(req).model_fields)
    named = []
    for name in fields:
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
        named.append(f"{name} (did you mean {close[0]}?)" if close else name)
    logger.warning("%s: ignoring unknown request fields %s", endpoint, ", ".join(named))


def prompt_items(prompt: str | list, param: str, max_items: int) -> list[str | list[int]]:
    """A prompt field (text, token ids, or a list of either) as a list of prompts."""
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise bad_request(f"{param} must not be empty", param)
    if isinstance(prompt[0], int):
        return [list(prompt)]
    if len(prompt) > max_items:
        raise bad_request(f"at most {max_items} prompts per request, got {len(prompt)}", param)
    return list(prompt)


def encode(tokenizer, text: str, add_special_tokens: bool, param: str = "prompt") -> list[int]:
    """Token ids of `text`; 400 for text that is not valid Unicode (lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise bad_request(f"{param} is not valid Unicode (it holds a lone surrogate)", param) from None
    return tokenizer(text, add_special_tokens=add_special_tokens).input_ids


def check_token_ids(ids: list[int], vocab_size: int, param: str = "prompt") -> None:
    if not ids:
        raise bad_request("the prompt is empty", param)
    bad = next((t for t in ids if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise bad_request(f"prompt token ids must be in [0, {vocab_size}), got {bad}", param)
