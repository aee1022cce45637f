"""POST /v1/completions: prompts (text, token ids, or lists of either) -> completions."""
from __future__ import annotations

import time
from contextlib import aclosing
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import Request

from octavo.server import sampling
from octavo.server.errors import bad_request
from octavo.server.logprobs import CompletionLogprobs, merge_completion, prompt_logprobs
from octavo.server.protocol import CompletionChoice, CompletionRequest, CompletionResponse, UsageInfo
from octavo.server.serving_common import (DONE, check_token_ids, encode, prompt_items, sse_chunk, sse_error,
                                          streaming_response, usage, warn_unknown_fields)
from octavo.server.state import ServerState
from octavo.server.tracking import EngineStream, merge, start_all, unless_disconnected

ENDPOINT = "/v1/completions"


@dataclass
class _Prompt:
    text: str  # for echo
    token_ids: list[int]


def _prompts(state: ServerState, req: CompletionRequest, items: list[str | list[int]]) -> list[_Prompt]:
    """Tokenized and checked (slow: run it with `state.run_blocking`)."""
    tok = state.tokenizer
    out = []
    for item in items:
        if isinstance(item, str):
            ids = encode(tok, item, req.add_special_tokens is not False)
            text = item
        else:
            ids, text = list(item), None
        check_token_ids(ids, state.vocab_size)
        truncated = sampling.truncate(ids, req.truncate_prompt_tokens, state.max_model_len)
        if text is None or len(truncated) != len(ids):
            text = tok.decode(truncated)
        out.append(_Prompt(text, truncated))
    return out


async def create_completion(state: ServerState, req: CompletionRequest, raw: Request, request_id: str):
    model = state.check_model(req.model)
    state.check_runner("generate")
    warn_unknown_fields(req, ENDPOINT)
    if req.suffix is not None:
        raise bad_request("suffix is not supported by this server", "suffix")
    sampling.check_common(req)
    sampling.check_num_sequences(req.best_of, "best_of")
    n = req.n or 1
    if req.best_of is not None and req.stream and req.best_of > n:
        raise bad_request("best_of > n cannot be used with stream (the best are known only at the end)", "best_of")
    if req.max_tokens is not None and req.max_tokens == 0 and not req.echo:
        raise bad_request("max_tokens must be at least 1 (0 is allowed only with echo)", "max_tokens")
    echo_only = bool(req.echo) and req.max_tokens == 0
    max_tokens = 1 if echo_only else req.max_tokens
    prompts = await state.run_blocking(_prompts, state, req, prompt_items(req.prompt, "prompt", sampling.MAX_PROMPTS))
    for p in prompts:
        sampling.check_context(len(p.token_ids), max_tokens, state.max_model_len)
    prompt_lps = req.prompt_logprobs
    if req.echo and req.logprobs is not None:
        prompt_lps = max(prompt_lps or 0, req.logprobs)
    guided, guided_param = sampling.structured_outputs(req, state.settings.disable_any_whitespace)
    params = sampling.build(req, max_tokens=max_tokens, logprobs=req.logprobs,
                            stream=bool(req.stream), best_of=req.best_of, prompt_logprobs=prompt_lps,
                            structured_outputs=guided, defaults=state.generation_defaults)
    streams = [EngineStream(state.engine, {"prompt_token_ids": p.token_ids, "prompt": p.text}, params,
                            request_id if len(prompts) == 1 else f"{request_id}-{i}", state.metrics,
                            state.settings.log_requests, ENDPOINT)
               for i, p in enumerate(prompts)]
    with sampling.guided_errors(guided_param):
        await start_all(streams)
    job = _Completion(state, req, model, request_id, prompts, streams, echo_only)
    if req.stream:
        return streaming_response(job.stream())
    return await unless_disconnected(raw, job.full())


class _Completion:
    def __init__(self, state: ServerState, req: CompletionRequest, model: str, request_id: str,
                 prompts: list[_Prompt], streams: list[EngineStream], echo_only: bool):
        self.state, self.req, self.model, self.request_id = state, req, model, request_id
        self.prompts, self.streams, self.echo_only = prompts, streams, echo_only
        self.n = req.n or 1
        self.created = int(time.time())

    def _echo_logprobs(self, lp: CompletionLogprobs, i: int, out) -> dict | None:
        if not self.req.echo or out.prompt_logprobs is None:
            return None
        return lp.add(self.prompts[i].token_ids, out.prompt_logprobs)

    async def full(self) -> CompletionResponse:
        finals: dict[int, object] = {}
        async with aclosing(merge(self.streams)) as outputs:
            async for i, out in outputs:
                if out.finished:
                    finals[i] = out
        choices: list[CompletionChoice] = []
        completion_tokens = cached = 0
        for i, prompt in enumerate(self.prompts):
            out = finals[i]
            cached += out.num_cached_tokens
            for c in out.outputs:
                text, token_ids, lps = c.text, c.token_ids, c.logprobs
                finish, stop_reason = c.finish_reason, c.stop_reason
                if self.echo_only:
                    text, token_ids, lps, finish, stop_reason = "", [], [], "length", None
                completion_tokens += len(token_ids)
                logprobs = None
                if self.req.logprobs is not None:
                    lp = CompletionLogprobs(self.state.token_texts(self.req))
                    logprobs = merge_completion(self._echo_logprobs(lp, i, out), lp.add(token_ids, lps or []))
                if self.req.echo:
                    text = prompt.text + text
                choices.append(CompletionChoice(
                    index=i * self.n + c.index, text=text, logprobs=logprobs, finish_reason=finish,
                    stop_reason=stop_reason,
                    prompt_logprobs=prompt_logprobs(out.prompt_logprobs) if self.req.prompt_logprobs is not None
                    else None,
                    prompt_token_ids=prompt.token_ids if self.req.return_token_ids else None,
                    token_ids=list(token_ids) if self.req.return_token_ids else None))
        choices.sort(key=lambda c: c.index)
        prompt_tokens = sum(len(p.token_ids) for p in self.prompts)
        return CompletionResponse(id=self.request_id, created=self.created, model=self.model, choices=choices,
                                  usage=UsageInfo(**usage(prompt_tokens, completion_tokens, cached)))

    def _chunk(self, choices: list[dict], usage_info: dict | None = None) -> str:
        return sse_chunk("text_completion", self.request_id, self.created, self.model, choices, usage_info)

    async def stream(self) -> AsyncIterator[str]:
        opts = self.req.stream_options
        include_usage = bool(opts and opts.include_usage)
        self._continuous = bool(opts and opts.continuous_usage_stats)
        self._lps: dict[int, CompletionLogprobs] = {}
        self._tokens: dict[int, int] = {}
        self._sent: set[int] = set()  # choices that have had their first chunk
        outputs = merge(self.streams)
        try:
            try:
                async for i, out in outputs:
                    for c in out.outputs:
                        chunk = self._stream_chunk(i, out, c)
                        if chunk is not None:
                            yield chunk
                if include_usage:
                    prompt_tokens = sum(len(p.token_ids) for p in self.prompts)
                    yield self._chunk([], usage(prompt_tokens, sum(self._tokens.values())))
            except Exception as exc:  # the stream has started: report in-band, then end it
                yield sse_error(exc, self.request_id)
            yield DONE
        finally:  # however the stream ends (client gone included): abort what still runs
            await outputs.aclose()
            for stream in self.streams:
                await stream.close()

    def _stream_chunk(self, i: int, out, c) -> str | None:
        """The SSE event for one sequence's delta, or None when there is nothing to send."""
        index = i * self.n + c.index
        prompt = self.prompts[i]
        text, token_ids, positions = c.text, c.token_ids, c.logprobs or []
        finish, stop_reason = c.finish_reason, c.stop_reason
        if self.echo_only:
            text, token_ids, positions, finish, stop_reason = "", [], [], "length", None
        self._tokens[index] = self._tokens.get(index, 0) + len(token_ids)
        first_chunk = index not in self._sent
        wants_tokens = self.req.logprobs is not None or bool(self.req.return_token_ids)
        if finish is None and not text and not (self.req.echo and first_chunk) and not (token_ids and wants_tokens):
            return None  # text held back (partial character or stop string): nothing to send
        self._sent.add(index)
        lp_chunk = None
        if self.req.logprobs is not None:
            lp = self._lps.setdefault(index, CompletionLogprobs(self.state.token_texts(self.req)))
            head = self._echo_logprobs(lp, i, out) if first_chunk else None
            lp_chunk = merge_completion(head, lp.add(token_ids, positions))
        if self.req.echo and first_chunk:
            text = prompt.text + text
        choice = {"index": index, "text": text, "logprobs": lp_chunk, "finish_reason": finish,
                  "stop_reason": stop_reason}
        if self.req.return_token_ids:
            choice["token_ids"] = list(token_ids)
            if first_chunk:
                choice["prompt_token_ids"] = prompt.token_ids
        live = usage(len(prompt.token_ids), self._tokens[index]) if self._continuous else None
        return self._chunk([choice], live)
